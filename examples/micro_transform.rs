use std::time::Instant;
fn main() {
    let us = Some(phonenumber::country::Id::US);
    let t = Instant::now();
    for i in 0..20000 {
        let _ = kdit::transform::to_e164(&format!("(201) {}-{:04}", 200 + i % 700, i % 10000), us);
    }
    println!(
        "e164 parse: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / 20000.0
    );
    let t = Instant::now();
    for i in 0..20000 {
        let _ = kdit::transform::to_e164(&format!("+1201{}{:04}", 200 + i % 700, i % 10000), None);
    }
    println!(
        "validate +: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / 20000.0
    );
    let t = Instant::now();
    for i in 0..20000 {
        let _ = kdit::transform::valid_email(&format!("user{i}@example.com"));
    }
    println!("email: {:.2} us", t.elapsed().as_secs_f64() * 1e6 / 20000.0);
}

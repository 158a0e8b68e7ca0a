//! Progress on stderr: a bar with rows, confirmed profiles, rate and ETA on a terminal; one
//! plain line every few seconds otherwise (CI logs).
//!
//! In: counts from `apply`. Out: text on stderr, through `output` (which decides whether a
//! bar is drawn). Quiet mode prints nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::output;

/// Reports progress of a run.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: Option<Mutex<(Instant, Instant)>>,
    total: u64,
}

impl Progress {
    /// `total`: rows expected (from the plan), 0 when unknown.
    pub fn new(total: u64, quiet: bool) -> Progress {
        if quiet {
            return Progress {
                bar: None,
                plain: None,
                total,
            };
        }
        if let Some(bar) = output::bar(total) {
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {bar:30} {pos}/{len} rows  {msg}  {per_sec}  ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Progress {
                bar: Some(bar),
                plain: None,
                total,
            }
        } else {
            let now = Instant::now();
            Progress {
                bar: None,
                plain: Some(Mutex::new((now, now))),
                total,
            }
        }
    }

    /// Rows read so far and profiles Klaviyo confirmed.
    pub fn update(&self, rows: u64, confirmed: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(rows);
            bar.set_message(format!("{} confirmed", output::thousands(confirmed)));
        } else if let Some(plain) = &self.plain {
            let mut p = plain.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if now.duration_since(p.1) >= Duration::from_secs(5) {
                p.1 = now;
                let secs = now.duration_since(p.0).as_secs_f64().max(0.001);
                output::say_line(format_args!(
                    "progress: {}/{} rows, {} profiles confirmed, {:.0} rows/s",
                    output::thousands(rows),
                    output::thousands(self.total),
                    output::thousands(confirmed),
                    rows as f64 / secs
                ));
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

//! The profile payload writer: a profile's attributes written as JSON while its row is
//! built, with the bytes serde_json would write for the same tree of values.
//!
//! In: field paths (`email`, `location.city`, `properties.a.b`) and each field's value (text,
//! a timestamp, or a `serde_json::Value`). Out: the attributes as one `Box<RawValue>`, made
//! in one allocation. Pure: no I/O. Holds the transform's only `unsafe` (two unchecked
//! conversions of what it wrote itself; see `Payload::finish`), and the reference tests that
//! compare its output with serde_json's.

use chrono::{DateTime, Utc};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::job::attributes::FieldPath;
use crate::rows::cell::write_datetime;

/// A profile's attributes while its row is built. Insertion-ordered with the semantics of
/// `serde_json::Map` under `preserve_order` (a key set again keeps its place), so it
/// serialises to the same bytes (a test compares them), but keys are borrowed from the
/// mapping and nothing is hashed: a profile has a handful of keys, and a linear scan beats
/// hashing them. Values are written as JSON into `leaves` as they are set; the tree keeps
/// only where each one is, so no JSON value is moved into it or kept.
pub(super) struct Payload<'m, 'b> {
    root: Object<'m>,
    leaves: &'b mut Vec<u8>,
    /// Writing a value failed (it never does for a `Value`): the payload cannot be made.
    failed: Option<serde_json::Error>,
}

#[derive(Default)]
struct Object<'m>(Vec<(&'m str, Node<'m>)>);

enum Node<'m> {
    /// A value's JSON: `leaves[start..end]`.
    Leaf(usize, usize),
    Object(Object<'m>),
}

impl<'m> Object<'m> {
    fn slot(&mut self, key: &'m str) -> Option<usize> {
        // Keys come from the mapping, so the same key is mostly the same memory.
        self.0
            .iter()
            .position(|(k, _)| std::ptr::eq(*k, key) || *k == key)
    }

    /// Sets `key` to the value at `leaves[start..end]`, keeping its place when it was set
    /// before. The node is made here from plain numbers rather than passed in: a `Node` built
    /// by the caller would be copied through memory on every call.
    fn set(&mut self, key: &'m str, start: usize, end: usize) {
        match self.slot(key) {
            Some(i) => self.0[i].1 = Node::Leaf(start, end),
            None => self.0.push((key, Node::Leaf(start, end))),
        }
    }

    /// The node at `key`, an empty object put there first when the key is new.
    fn entry(&mut self, key: &'m str) -> &mut Node<'m> {
        let i = match self.slot(key) {
            Some(i) => i,
            None => {
                self.0
                    .push((key, Node::Object(Object(Vec::with_capacity(8)))));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    /// Sets `attributes.<path>` to the value at `leaves[start..end]`, creating `location` /
    /// nested property objects.
    fn insert(&mut self, path: &'m FieldPath, start: usize, end: usize) {
        match path {
            FieldPath::Standard(name) => self.set(name, start, end),
            FieldPath::Location(name) => {
                if let Node::Object(m) = self.entry("location") {
                    m.set(name, start, end);
                }
            }
            FieldPath::Property(parts) => {
                let mut cur = self.entry("properties");
                for (i, p) in parts.iter().enumerate() {
                    let Node::Object(m) = cur else { return };
                    if i + 1 == parts.len() {
                        m.set(p, start, end);
                        return;
                    }
                    cur = m.entry(p);
                    if !matches!(cur, Node::Object(_)) {
                        *cur = Node::Object(Object::default());
                    }
                }
            }
        }
    }

    fn write_json(&self, leaves: &[u8], out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.push(b'{');
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(out, k)?;
            out.push(b':');
            match v {
                Node::Leaf(start, end) => out.extend_from_slice(&leaves[*start..*end]),
                Node::Object(o) => o.write_json(leaves, out)?,
            }
        }
        out.push(b'}');
        Ok(())
    }
}

impl<'m, 'b> Payload<'m, 'b> {
    /// `leaves` is scratch space, reused from row to row.
    pub(super) fn new(fields: usize, leaves: &'b mut Vec<u8>) -> Payload<'m, 'b> {
        leaves.clear();
        Payload {
            root: Object(Vec::with_capacity(fields)),
            leaves,
            failed: None,
        }
    }

    /// Sets `attributes.<path>` to the JSON `write` writes.
    pub(super) fn insert_with(&mut self, path: &'m FieldPath, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.leaves.len();
        write(self.leaves);
        self.root.insert(path, start, self.leaves.len());
    }

    /// Sets `attributes.<path>` to the text `s`.
    pub(super) fn insert_str(&mut self, path: &'m FieldPath, s: &str) {
        let start = self.leaves.len();
        if let Err(e) = write_json_str(self.leaves, s) {
            self.failed.get_or_insert(e);
        }
        self.root.insert(path, start, self.leaves.len());
    }

    /// Sets `attributes.<path>` to `v`, written as serde_json writes it.
    pub(super) fn insert(&mut self, path: &'m FieldPath, v: &Value) {
        let start = self.leaves.len();
        let written = match v {
            Value::String(s) => write_json_str(self.leaves, s),
            v => serde_json::to_writer(&mut *self.leaves, v),
        };
        if let Err(e) = written {
            self.failed.get_or_insert(e);
        }
        self.root.insert(path, start, self.leaves.len());
    }

    /// The payload as JSON, in one allocation of the exact size; `out` is scratch space.
    pub(super) fn finish(mut self, out: &mut Vec<u8>) -> serde_json::Result<Box<RawValue>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        out.clear();
        self.root.write_json(self.leaves, out)?;
        debug_assert!(std::str::from_utf8(out).is_ok());
        // SAFETY: `write_json` writes text only from `str`s, ASCII punctuation and
        // serde_json's own output: valid UTF-8.
        let json = unsafe { String::from_utf8_unchecked(out.as_slice().to_vec()) };
        // SAFETY: `write_json` writes one JSON object with no surrounding whitespace: its
        // keys and texts quoted and escaped as serde_json does, every other value written
        // by serde_json itself.
        Ok(unsafe { RawValue::from_string_unchecked(json) })
    }
}

/// A timestamp as a JSON string: `format_datetime`'s text, which has nothing to escape.
pub(super) fn write_datetime_json(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    out.push(b'"');
    write_datetime(out, t);
    out.push(b'"');
}

/// A JSON string as serde_json writes it: text with no `"`, `\` or control character (nearly
/// all text) is copied as it is; other text is left to serde_json's escaping.
fn write_json_str(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    if needs_escape(s.as_bytes()) {
        return serde_json::to_writer(out, s);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Whether text has a byte JSON escapes (`"`, `\`, below 0x20), eight bytes at a time.
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `x` is below `n` (n ≤ 0x80) exactly when `(x - n·ONES) & !x & HIGH` has its
    // high bit: borrows only ever come from such a byte, so the answer for a word is exact.
    let any = |x: u64| {
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        ((x.wrapping_sub(ONES * 0x20) & !x)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash))
            & HIGH
            != 0
    };
    let word = |w: &[u8]| u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]));
    if b.len() < 8 {
        return b.iter().any(|b| *b < 0x20 || *b == b'"' || *b == b'\\');
    }
    // Whole words, then the last eight bytes (overlapping the words before them): no copy
    // of the tail into a buffer, which would cost more than the check.
    b.chunks_exact(8).any(|w| any(word(w))) || any(word(&b[b.len() - 8..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    /// The reference: the attributes as a tree of `Value`s with the semantics of
    /// `serde_json::Map` under `preserve_order`, serialised by serde_json itself.
    mod reference {
        use super::*;

        #[derive(Default)]
        pub struct Object<'m>(pub Vec<(&'m str, Node<'m>)>);

        pub enum Node<'m> {
            Leaf(Value),
            Object(Object<'m>),
        }

        impl<'m> Object<'m> {
            fn slot(&mut self, key: &'m str) -> Option<usize> {
                self.0.iter().position(|(k, _)| *k == key)
            }

            fn set(&mut self, key: &'m str, node: Node<'m>) {
                match self.slot(key) {
                    Some(i) => self.0[i].1 = node,
                    None => self.0.push((key, node)),
                }
            }

            fn entry(&mut self, key: &'m str) -> &mut Node<'m> {
                let i = match self.slot(key) {
                    Some(i) => i,
                    None => {
                        self.0.push((key, Node::Object(Object::default())));
                        self.0.len() - 1
                    }
                };
                &mut self.0[i].1
            }

            pub fn insert(&mut self, path: &'m FieldPath, v: Value) {
                match path {
                    FieldPath::Standard(name) => self.set(name, Node::Leaf(v)),
                    FieldPath::Location(name) => {
                        if let Node::Object(m) = self.entry("location") {
                            m.set(name, Node::Leaf(v));
                        }
                    }
                    FieldPath::Property(parts) => {
                        let mut cur = self.entry("properties");
                        for (i, p) in parts.iter().enumerate() {
                            let Node::Object(m) = cur else { return };
                            if i + 1 == parts.len() {
                                m.set(p, Node::Leaf(v));
                                return;
                            }
                            cur = m.entry(p);
                            if !matches!(cur, Node::Object(_)) {
                                *cur = Node::Object(Object::default());
                            }
                        }
                    }
                }
            }
        }

        impl Serialize for Object<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap as _;
                let mut map = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in &self.0 {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }

        impl Serialize for Node<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    Node::Leaf(v) => v.serialize(s),
                    Node::Object(o) => o.serialize(s),
                }
            }
        }
    }

    /// The payload gives the bytes serde_json gives for the tree of `Value`s (`reference`)
    /// with the same paths: every kind of value, text that needs escaping or
    /// not, keys set again, and paths that run into values set before (`location` or a
    /// property set as a value, then as an object).
    #[test]
    fn payloads_are_written_as_serde_json_writes_them() {
        let mut next = crate::rows::testing::xorshift(0xD1B5_4A32_D192_ED03u64);
        let pieces = [
            "a",
            "Zürich",
            "\"",
            "\\",
            "\n",
            "\t",
            "\u{1}",
            "\u{1f}",
            "\u{7f}",
            "東京",
            " ",
            "/",
            "é",
            "\r",
            "\u{8}",
            "\u{c}",
            "x@example.com",
            "'",
            "<",
            "\u{2028}",
            "😀",
            "",
        ];
        fn text(next: &mut impl FnMut() -> u64, pieces: &[&str]) -> String {
            (0..next() % 6)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect()
        }
        fn leaf(next: &mut impl FnMut() -> u64, pieces: &[&str], depth: u32) -> Value {
            match next() % if depth > 2 { 7 } else { 9 } {
                0..=2 => Value::String(text(next, pieces)),
                3 => Value::from(next() as i64),
                4 => Value::from(next()),
                5 => Value::from(f64::from_bits(next() % (0x7FEu64 << 52))),
                6 => [Value::Null, Value::Bool(true), Value::Bool(false)][(next() % 3) as usize]
                    .clone(),
                7 => Value::Array(
                    (0..next() % 4)
                        .map(|_| leaf(next, pieces, depth + 1))
                        .collect(),
                ),
                _ => Value::Object(
                    (0..next() % 4)
                        .map(|_| (text(next, pieces), leaf(next, pieces, depth + 1)))
                        .collect(),
                ),
            }
        }
        let mut paths = vec![
            FieldPath::Standard("email"),
            FieldPath::Standard("first_name"),
            FieldPath::Standard("location"),
            FieldPath::Standard("properties"),
            FieldPath::Standard("k\"\u{1}"),
            FieldPath::Location("city"),
            FieldPath::Location("zip"),
            FieldPath::Location("é\n"),
        ];
        let parts = ["a", "b", "plan", "é\"q", "\u{2}"];
        for x in 0..parts.len() {
            paths.push(FieldPath::Property(vec![parts[x].to_string()]));
            for y in 0..parts.len() {
                paths.push(FieldPath::Property(vec![parts[x].into(), parts[y].into()]));
                paths.push(FieldPath::Property(vec![
                    parts[x].into(),
                    parts[y].into(),
                    "z".into(),
                ]));
            }
        }
        let (mut leaves, mut out) = (Vec::new(), Vec::new());
        let (mut escaped, mut replaced) = (0, 0);
        for _ in 0..20_000 {
            let mut payload = Payload::new(4, &mut leaves);
            let mut tree = reference::Object::default();
            for _ in 0..next() % 9 {
                let path = &paths[(next() % paths.len() as u64) as usize];
                let v = leaf(&mut next, &pieces, 0);
                payload.insert(path, &v);
                tree.insert(path, v);
            }
            let expected = serde_json::to_string(&tree).unwrap();
            assert_eq!(payload.finish(&mut out).unwrap().get(), expected);
            escaped += usize::from(expected.contains('\\'));
            replaced += usize::from(expected.contains("\"location\":{") && tree.0.len() > 2);
        }
        assert!(escaped > 1000, "escaping was hardly tested");
        assert!(replaced > 100, "nesting was hardly tested");
    }

    /// The word-at-a-time check finds every byte JSON escapes, wherever it sits, and nothing
    /// else: every byte value at every position of texts of up to 20 bytes.
    #[test]
    fn escapes_are_found_at_every_position() {
        for len in 1..=20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[at] = b;
                    let want = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escape(&text), want, "{b:#x} at {at} of {len}");
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("Zürich 東京 😀".as_bytes()));
    }
}

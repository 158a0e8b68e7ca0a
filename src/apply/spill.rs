//! The work a plan found, kept on disk: every profile to send (serialised as it will be sent)
//! and every rejected row, so `run` applies exactly what its plan showed without running the
//! query a second time, and memory stays flat whatever the number of changes.
//!
//! In: decisions from the diff. Out: a temporary JSON-lines file read back by `apply`,
//! removed when dropped. File I/O.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::digest::Fingerprint;
use crate::plan::{Action, Rejected};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One profile to send.
#[derive(Debug, Serialize, Deserialize)]
pub struct ToSend {
    pub row: u64,
    pub key: String,
    /// Payload fingerprint, recorded in the state once Klaviyo confirms.
    #[serde(with = "hex16")]
    pub hash: [u8; 16],
    pub action: Action,
    /// Bits (by the job's list index) of the lists the profile joins with this send.
    pub adds: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset: Vec<String>,
    /// The consent change this send carries (`consent`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<crate::plan::consent::ConsentAction>,
    pub attributes: Box<RawValue>,
    /// The fingerprint of the row the payload was made from, recorded with the hash.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex16_opt")]
    pub source: Option<Fingerprint>,
}

/// An unchanged profile whose row fingerprint the state does not have yet.
#[derive(Debug, Serialize, Deserialize)]
pub struct Refresh {
    pub key: String,
    #[serde(with = "hex16")]
    pub source: Fingerprint,
}

#[derive(Serialize, Deserialize)]
enum Line {
    #[serde(rename = "s")]
    Send(ToSend),
    #[serde(rename = "r")]
    Reject(Rejected),
    #[serde(rename = "f")]
    Refresh(Refresh),
}

/// A spill file being written.
pub struct Spill {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    pub sends: u64,
    pub rejects: u64,
    pub refreshes: u64,
}

impl Spill {
    pub fn create() -> std::io::Result<Spill> {
        let path = std::env::temp_dir().join(format!(
            "kdit-plan-{}-{}.jsonl",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let out = BufWriter::with_capacity(256 * 1024, File::create(&path)?);
        Ok(Spill {
            path,
            out: Some(out),
            sends: 0,
            rejects: 0,
            refreshes: 0,
        })
    }

    pub fn send(&mut self, s: ToSend) -> std::io::Result<()> {
        self.sends += 1;
        self.line(&Line::Send(s))
    }

    pub fn reject(&mut self, r: &Rejected) -> std::io::Result<()> {
        self.rejects += 1;
        self.line(&Line::Reject(r.clone()))
    }

    pub fn refresh(&mut self, r: Refresh) -> std::io::Result<()> {
        self.refreshes += 1;
        self.line(&Line::Refresh(r))
    }

    fn line(&mut self, l: &Line) -> std::io::Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| std::io::Error::other("spill already closed"))?;
        serde_json::to_writer(&mut *out, l)?;
        out.write_all(b"\n")
    }

    /// Finishes writing; the spill can then be read (any number of times).
    pub fn close(&mut self) -> std::io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        Ok(())
    }

    /// Reads the spill back, in the order it was written.
    pub fn read(&self) -> std::io::Result<impl Iterator<Item = std::io::Result<Spilled>>> {
        let reader = BufReader::with_capacity(256 * 1024, File::open(&self.path)?);
        Ok(reader.lines().map(|line| {
            let line = line?;
            match serde_json::from_str::<Line>(&line) {
                Ok(Line::Send(s)) => Ok(Spilled::Send(s)),
                Ok(Line::Reject(r)) => Ok(Spilled::Reject(r)),
                Ok(Line::Refresh(r)) => Ok(Spilled::Refresh(r)),
                Err(e) => Err(std::io::Error::other(format!("spill file is damaged: {e}"))),
            }
        }))
    }
}

/// One line of the work file, read back: a profile to send, a rejected row, or an unchanged
/// row's fingerprint to record.
pub enum Spilled {
    Send(ToSend),
    Reject(Rejected),
    Refresh(Refresh),
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.out.take();
        let _ = std::fs::remove_file(&self.path);
    }
}

mod hex16 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::digest::hex(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 16];
        if s.len() != 32 {
            return Err(serde::de::Error::custom("hash must be 32 hex digits"));
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(serde::de::Error::custom)?;
        }
        Ok(out)
    }
}

mod hex16_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Option<[u8; 16]>, s: S) -> Result<S::Ok, S::Error> {
        match h {
            Some(h) => crate::apply::spill::hex16::serialize(h, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 16]>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "crate::apply::spill::hex16")] [u8; 16]);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spill_reads_back_what_was_written_and_is_removed_after() {
        let mut spill = Spill::create().unwrap();
        let raw =
            serde_json::value::to_raw_value(&serde_json::json!({"email": "a@x.com"})).unwrap();
        spill
            .send(ToSend {
                row: 1,
                key: "a@x.com".into(),
                hash: [7; 16],
                action: Action::Create,
                adds: 1,
                unset: vec![],
                consent: Some(crate::plan::consent::ConsentAction::Unsubscribe),
                attributes: raw,
                source: Some([9; 16]),
            })
            .unwrap();
        spill
            .reject(&Rejected {
                row: 2,
                key: "b".into(),
                field: "email".into(),
                rule: "email_syntax".into(),
                message: "bad".into(),
            })
            .unwrap();
        spill.close().unwrap();
        let lines: Vec<Spilled> = spill.read().unwrap().map(Result::unwrap).collect();
        assert!(
            matches!(&lines[0], Spilled::Send(s) if s.hash == [7; 16] && s.source == Some([9; 16]) && s.consent == Some(crate::plan::consent::ConsentAction::Unsubscribe) && s.attributes.get() == r#"{"email":"a@x.com"}"#)
        );
        assert!(matches!(&lines[1], Spilled::Reject(r) if r.row == 2));
        let path = spill.path.clone();
        drop(spill);
        assert!(!path.exists());
    }
}

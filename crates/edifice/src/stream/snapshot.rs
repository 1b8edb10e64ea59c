//! A stream's state to and from bytes.
//!
//! ```text
//! "EDIFSTRM" | version u32 | fingerprint u64 | position u64 | buffers u32
//! per buffer: values u64 | f32 × values          (little-endian)
//! ```
//!
//! The buffers are the key/value caches (keys, then values), then the
//! histories, in the streamer's order; the scratch is not saved (a step overwrites it before
//! reading it). The fingerprint names the model, its weights and the
//! stream options, so a snapshot restores only into a stream of the same
//! streamer, in this process or another.

use super::StreamState;
use crate::Error;

const MAGIC: &[u8; 8] = b"EDIFSTRM";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

impl StreamState {
    /// The stream's state as bytes (see [`restore`](Self::restore)).
    pub fn snapshot(&self) -> Vec<u8> {
        let values: usize = self.buffers().map(<[f32]>::len).sum();
        let mut out =
            Vec::with_capacity(32 + 8 * self.kv.len() + 8 * self.history.len() + 4 * values);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.t.to_le_bytes());
        out.extend_from_slice(&(self.buffers().count() as u32).to_le_bytes());
        for buf in self.buffers() {
            out.extend_from_slice(&(buf.len() as u64).to_le_bytes());
            buf.iter()
                .for_each(|v| out.extend_from_slice(&v.to_bits().to_le_bytes()));
        }
        out
    }

    /// Replaces this stream's state with a [`snapshot`](Self::snapshot)
    /// taken from a stream of the same streamer (same model, weights and
    /// options). Anything else — another model, another version, a
    /// truncated or corrupt file — is an error and leaves the state as it was.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(8)? != MAGIC {
            return Err(bad("not a stream snapshot (no EDIFSTRM header)"));
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(bad(&format!(
                "snapshot format version {version}, this build reads version {VERSION}"
            )));
        }
        if r.u64()? != self.fingerprint {
            return Err(bad(
                "the snapshot is of another model, other weights or other stream options",
            ));
        }
        let t = r.u64()?;
        let count = r.u32()? as usize;
        let sizes: Vec<usize> = self.buffers().map(<[f32]>::len).collect();
        if count != sizes.len() {
            return Err(bad(&format!(
                "{count} buffers, this stream has {}",
                sizes.len()
            )));
        }
        let mut values = Vec::with_capacity(count);
        for (i, &want) in sizes.iter().enumerate() {
            let n = r.u64()?;
            if n != want as u64 {
                return Err(bad(&format!(
                    "buffer {i} holds {n} values, this stream's {want}"
                )));
            }
            let raw = r.take(4 * want)?;
            values.push(
                raw.chunks_exact(4)
                    .map(|b| f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect::<Vec<f32>>(),
            );
        }
        if r.at != bytes.len() {
            return Err(bad(&format!(
                "{} bytes after the last buffer",
                bytes.len() - r.at
            )));
        }
        for (buf, v) in self.buffers_mut().zip(values) {
            buf.copy_from_slice(&v);
        }
        self.t = t;
        Ok(())
    }

    fn buffers(&self) -> impl Iterator<Item = &[f32]> {
        let kv = self.kv.iter().flat_map(|c| c.data());
        kv.chain(self.history.iter().map(|h| h.data()))
    }

    fn buffers_mut(&mut self) -> impl Iterator<Item = &mut [f32]> {
        let kv = self.kv.iter_mut().flat_map(|c| c.data_mut());
        kv.chain(self.history.iter_mut().map(|h| h.data_mut()))
    }
}

fn bad(what: &str) -> Error {
    Error::Stream(format!("cannot restore the snapshot: {what}"))
}

/// Little-endian fields in order, each read checked against the end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| bad("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

//! NumPy's `.npy` (one array) and `.npz` (a zip of `.npy` arrays) files:
//! little-endian `f4`, `f8`, `i4`, `i8`, C order.

use std::collections::BTreeMap;
use std::io::Read;

use super::tensors::{from_arrays, Array, Kind};
use super::Dataset;
use crate::Error;

/// An `.npz` with arrays `x`, `y` and optional `lengths`.
pub fn read_npz(bytes: &[u8], file: &str) -> Result<Dataset, Error> {
    let bad = |m: String| Error::Data(format!("{file}: {m}"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(format!("not a valid .npz (zip) file: {e}")))?;
    let mut arrays = BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| bad(format!("entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| bad(format!("entry {i}: {e}")))?
            .trim_end_matches(".npy")
            .to_string();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| bad(format!("entry `{name}`: {e}")))?;
        arrays.insert(
            name.clone(),
            parse(&data).map_err(|m| bad(format!("array `{name}`: {m}")))?,
        );
    }
    from_arrays(arrays, file)
}

/// An `.npy` of shape `[N, T, E + 1]`: features, and the target in the
/// last feature of each sequence's first frame (all frames real).
pub fn read_npy(bytes: &[u8], file: &str) -> Result<Dataset, Error> {
    let a = parse(bytes).map_err(|m| Error::Data(format!("{file}: {m}")))?;
    let [n, t, w] = a.shape[..] else {
        return Err(Error::Data(format!(
            "{file}: a single .npy must be [N, T, E + 1], got {:?}",
            a.shape
        )));
    };
    if w < 2 {
        return Err(Error::Data(format!(
            "{file}: [N, T, E + 1] needs at least one feature and the target"
        )));
    }
    let e = w - 1;
    let mut x = Vec::with_capacity(n * t * e);
    let mut y = Vec::with_capacity(n);
    for s in 0..n {
        for f in 0..t {
            let row = &a.values[(s * t + f) * w..(s * t + f + 1) * w];
            x.extend_from_slice(&row[..e]);
        }
        y.push(a.values[s * t * w + e]);
    }
    let integer = y.iter().all(|v| v.fract() == 0.0);
    let arrays = BTreeMap::from([
        (
            "x".to_string(),
            Array {
                shape: vec![n, t, e],
                values: x,
                integer: false,
            },
        ),
        (
            "y".to_string(),
            Array {
                shape: vec![n],
                values: y,
                integer,
            },
        ),
    ]);
    from_arrays(arrays, file)
}

/// One `.npy` array.
fn parse(bytes: &[u8]) -> Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-text .npy header")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or(format!("the header has no '{key}'"))?;
        Ok(header[at + key.len() + 2..]
            .trim_start()
            .trim_start_matches(':')
            .trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.get(1..4).ok_or("bad descr")?;
    if field("fortran_order")?.starts_with("True") {
        return Err(
            "Fortran-order arrays are not supported; save with np.ascontiguousarray".into(),
        );
    }
    let shape_text = field("shape")?;
    let close = shape_text.find(')').ok_or("bad shape")?;
    let shape = shape_text[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape entry `{s}`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count: usize = shape.iter().product();
    let data = &bytes[start + header_len..];
    let kind = match descr {
        "<f4" => Kind::F32,
        "<f8" => Kind::F64,
        "<i4" => Kind::I32,
        "<i8" => Kind::I64,
        other => {
            return Err(format!(
                "dtype `{other}` is not supported (little-endian f4, f8, i4, i8)"
            ))
        }
    };
    let size = kind.size();
    if data.len() < count * size {
        return Err(format!(
            "{} bytes of data for {count} values of {size} bytes",
            data.len()
        ));
    }
    Ok(Array::new(shape, kind, &data[..count * size]))
}

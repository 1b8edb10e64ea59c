//! Python buffers (NumPy arrays, or `torch.Tensor.numpy()` views of CPU
//! tensors) as Rust slices, without copies.
//!
//! f32 arrays cross as `float32`; bf16 tensors cross as their bits, an
//! `int16` view (`t.view(torch.int16).numpy()`), since NumPy has no bf16.
//! Every buffer must be C-contiguous and aligned; every buffer written must
//! be writable and share no byte with any other buffer of the call, so the
//! slices handed to the kernel obey Rust's aliasing rules even while the
//! GIL is released.

use std::ops::Range;

use edifice_kernels::bf16;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// Element types a buffer may be read as: plain data for which every bit
/// pattern of their size is a valid value.
///
/// # Safety
/// Implementors must have no padding, no invalid bit patterns and no drop
/// glue.
pub unsafe trait Plain: Copy + Send + Sync + 'static {}

// SAFETY: primitive numbers: every bit pattern is a value.
unsafe impl Plain for f32 {}
// SAFETY: `bf16` is `repr(transparent)` over `u16`.
unsafe impl Plain for bf16 {}

/// The element type of a buffer, read from its format character.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// `float32`.
    F32,
    /// bf16 bits in an `int16` or `uint16` array.
    Bf16,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::Bf16 => "bfloat16 (as int16 bits)",
        }
    }
}

/// One buffer argument of a call.
pub struct Arg {
    name: &'static str,
    buf: PyUntypedBuffer,
    dtype: Dtype,
}

/// Whether the call writes an argument.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Read,
    /// Written (must be writable and overlap nothing else).
    Write,
}

impl Arg {
    /// The buffer of `obj`, named `name` in errors.
    pub fn get(obj: &Bound<'_, PyAny>, name: &'static str) -> PyResult<Self> {
        let buf = PyUntypedBuffer::get(obj).map_err(|_| {
            PyTypeError::new_err(format!(
                "{name}: expected a NumPy array or other buffer, got {}",
                type_name(obj)
            ))
        })?;
        let format = buf.format().to_bytes();
        let code = match format {
            [b'@' | b'=' | b'<', c] | [c] => *c,
            _ => 0,
        };
        let dtype = match (code, buf.item_size()) {
            (b'f', 4) => Dtype::F32,
            (b'h' | b'H', 2) => Dtype::Bf16,
            _ => {
                return Err(PyTypeError::new_err(format!(
                    "{name}: expected float32 or bfloat16 data, got buffer format {:?}",
                    String::from_utf8_lossy(format)
                )))
            }
        };
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err(format!(
                "{name}: the buffer must be C-contiguous"
            )));
        }
        Ok(Self { name, buf, dtype })
    }

    /// The buffers of a call's positional arguments, one per name.
    pub fn named<const N: usize>(
        args: &Bound<'_, PyTuple>,
        names: [&'static str; N],
    ) -> PyResult<[Self; N]> {
        if args.len() != N {
            return Err(PyTypeError::new_err(format!(
                "expected {N} buffers ({}), got {}",
                names.join(", "),
                args.len()
            )));
        }
        let mut out = Vec::with_capacity(N);
        for (obj, name) in args.iter().zip(names) {
            out.push(Self::get(&obj, name)?);
        }
        Ok(out
            .try_into()
            .unwrap_or_else(|_| unreachable!("one buffer per name")))
    }

    /// Elements in the buffer.
    pub fn len(&self) -> usize {
        self.buf.item_count()
    }

    fn bytes(&self) -> Range<usize> {
        let start = self.buf.buf_ptr() as usize;
        start..start + self.buf.len_bytes()
    }

    /// Checks the argument holds `E` (by size: the dtype is checked by
    /// [`same_dtype`]), is aligned for it, and is writable if `access` says so.
    fn check<E: Plain>(&self, access: Access) -> PyResult<()> {
        if self.buf.item_size() != std::mem::size_of::<E>() {
            return Err(PyTypeError::new_err(format!(
                "{}: expected {}-byte elements, got {}",
                self.name,
                std::mem::size_of::<E>(),
                self.buf.item_size()
            )));
        }
        if !(self.buf.buf_ptr() as usize).is_multiple_of(std::mem::align_of::<E>()) {
            return Err(PyValueError::new_err(format!(
                "{}: the buffer is not aligned for its element type",
                self.name
            )));
        }
        if access == Access::Write && self.buf.readonly() {
            return Err(PyValueError::new_err(format!(
                "{}: the output buffer is read-only",
                self.name
            )));
        }
        Ok(())
    }

    /// The elements, read only.
    pub fn read<E: Plain>(&self) -> PyResult<&[E]> {
        self.check::<E>(Access::Read)?;
        if self.len() == 0 {
            return Ok(&[]);
        }
        // SAFETY: the exporter keeps the C-contiguous, aligned (checked)
        // memory of `len` elements of `E`'s size alive while `self.buf`
        // holds the view, which outlives the returned borrow. Any bit
        // pattern is a valid `E` (Plain). Writers in the same call are
        // disjoint from it (`disjoint`).
        Ok(unsafe { std::slice::from_raw_parts(self.buf.buf_ptr() as *const E, self.len()) })
    }

    /// The elements, to be written.
    #[allow(clippy::mut_from_ref)]
    pub fn write<E: Plain>(&self) -> PyResult<&mut [E]> {
        self.check::<E>(Access::Write)?;
        if self.len() == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as in `read`, and the buffer is writable (checked);
        // `disjoint` has checked no other buffer of the call shares a byte
        // with it, and each argument is written through one slice only
        // (callers take `write` once per argument).
        Ok(unsafe { std::slice::from_raw_parts_mut(self.buf.buf_ptr() as *mut E, self.len()) })
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an unknown type".into())
}

/// Checks every argument has `dtype`.
pub fn same_dtype(args: &[&Arg], dtype: Dtype) -> PyResult<()> {
    for a in args {
        if a.dtype != dtype {
            return Err(PyTypeError::new_err(format!(
                "{}: expected {}, got {}",
                a.name,
                dtype.name(),
                a.dtype.name()
            )));
        }
    }
    Ok(())
}

/// Checks no written argument shares a byte with any other argument.
pub fn disjoint(args: &[(&Arg, Access)]) -> PyResult<()> {
    for (i, (a, access)) in args.iter().enumerate() {
        if *access != Access::Write || a.len() == 0 {
            continue;
        }
        let ra = a.bytes();
        for (j, (b, _)) in args.iter().enumerate() {
            let rb = b.bytes();
            if i != j && b.len() > 0 && ra.start < rb.end && rb.start < ra.end {
                return Err(PyValueError::new_err(format!(
                    "{} shares memory with {}: outputs must not overlap any other argument",
                    a.name, b.name
                )));
            }
        }
    }
    Ok(())
}

/// Checks one kernel call's buffers: `reads` and `writes` share the first
/// read's element type, `lse` is f32 (read or written as `lse.1` says),
/// and no written buffer overlaps another. Returns the element type.
pub fn check_call(reads: &[&Arg], writes: &[&Arg], lse: (&Arg, Access)) -> PyResult<Dtype> {
    same_dtype(&[lse.0], Dtype::F32)?;
    let dtype = reads.first().map_or(Dtype::F32, |a| a.dtype);
    let data: Vec<&Arg> = reads.iter().chain(writes).copied().collect();
    same_dtype(&data, dtype)?;
    let mut all: Vec<(&Arg, Access)> = reads.iter().map(|&a| (a, Access::Read)).collect();
    all.extend(writes.iter().map(|&a| (a, Access::Write)));
    all.push(lse);
    disjoint(&all)?;
    Ok(dtype)
}

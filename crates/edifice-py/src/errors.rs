//! Rust errors as Python exceptions: bad values (shapes, patterns, configs,
//! corrupt files) are `ValueError`, unreadable files `OSError`.

use edifice::Error;
use edifice_kernels::KernelError;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::PyErr;

/// A kernel refusal as a `ValueError` with the kernel's message.
pub fn kernel_error(e: KernelError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A model, stream or weights error as a `ValueError`.
pub fn model_error(e: Error) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A file that cannot be read, naming it.
pub fn io_error(path: &str, e: std::io::Error) -> PyErr {
    PyOSError::new_err(format!("cannot read {path}: {e}"))
}

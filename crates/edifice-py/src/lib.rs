//! `edifice._edifice`: the native half of the `edifice` Python package
//! (`python/edifice`). Buffers cross without copies (see [`buffers`]); the
//! GIL is released while a kernel runs. The Python half checks devices,
//! dtypes and shapes first, with messages naming the argument, so these
//! functions see well-formed calls; they still check everything they rely
//! on, and refuse the rest with an exception, never a crash.

mod buffers;
mod errors;
mod kernel;
mod model;

use pyo3::prelude::*;

/// The native module.
#[pymodule]
fn _edifice(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<kernel::Kernel>()?;
    m.add_class::<kernel::Blocks>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Stream>()?;
    m.add_function(wrap_pyfunction!(kernel::check_pattern, m)?)?;
    m.add_function(wrap_pyfunction!(threads, m)?)?;
    Ok(())
}

/// Worker threads the kernels use (rayon's pool: `RAYON_NUM_THREADS`, else
/// one per core).
#[pyfunction]
fn threads() -> usize {
    rayon::current_num_threads()
}

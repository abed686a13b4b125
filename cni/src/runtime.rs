//! The plugin's one small async runtime: a current-thread tokio runtime with IO only.

use std::future::Future;

use tokio::runtime::Runtime;

pub fn new() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_io().build().expect("a current-thread runtime always builds")
}

/// Runs one future to completion on a fresh runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    new().block_on(future)
}

//! The plugin's one small async runtime: a current-thread tokio runtime with IO only.

use std::future::Future;

pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a current-thread runtime always builds")
        .block_on(future)
}

//! Boxed futures as the runtime and the sinks hold them, and a free one that is already done.

use std::future::Future;
use std::pin::Pin;

/// A boxed future, as the runtime stores job futures.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A future that is already done. It has no state, so boxing it allocates nothing (an
/// `async {}` block has a state byte, and every box of one is an allocation).
struct Done;

impl Future for Done {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Ready(())
    }
}

/// [`Done`], boxed for free: what sinks that finish at once return.
pub(crate) fn done() -> BoxFuture<()> {
    Box::pin(Done)
}

/// A future that is already done and says `true`: what a result sink that finishes at once
/// returns (zero-sized, so boxing it allocates nothing either).
struct Written;

impl Future for Written {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<bool> {
        std::task::Poll::Ready(true)
    }
}

/// [`Written`], boxed for free.
pub(crate) fn written() -> BoxFuture<bool> {
    Box::pin(Written)
}

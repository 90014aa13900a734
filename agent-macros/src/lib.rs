//! The `#[job_agent]` attribute. Use it through `jobagent`, which re-exports it.

mod attr;
mod expand;

use proc_macro::TokenStream;

/// Registers a struct as a job the scheduling center can run. See `jobagent::job_agent`.
#[proc_macro_attribute]
pub fn job_agent(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::job_agent(args.into(), item.into()).into()
}

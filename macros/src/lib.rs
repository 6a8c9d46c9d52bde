//! The `#[service]` attribute of [diarrhoea](https://docs.rs/diarrhoea): a trait of `async fn`s
//! becomes Router routes and a typed client, on protocol v1's wire.
//!
//! Use it as `#[diarrhoea::service]`, re-exported by `diarrhoea` behind its default feature
//! `macros`; the documentation lives there. This crate reads the trait (`model`) and writes
//! the code (`expand`).

use proc_macro::TokenStream;

mod expand;
mod model;

/// Turns a trait of `async fn`s into a service: the trait itself (each method returns a `Send`
/// future; a provided `into_router`), and a typed client `<Trait>Client`.
///
/// See `diarrhoea::service` for the full description and an example.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    let options = syn::parse_macro_input!(args with model::Options::parse);
    let item = syn::parse_macro_input!(item as syn::ItemTrait);
    match model::Service::read(options, item) {
        Ok(service) => expand::service(&service).into(),
        Err(errors) => errors.to_compile_error().into(),
    }
}

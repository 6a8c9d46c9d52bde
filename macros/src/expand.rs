//! Writes a checked service: the trait with `Send` futures and `into_router`, and its client.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ReturnType, Type};

use crate::model::{Method, Output, Service};

/// The code of an `Err` from a method without `#[rpc(code = N)]`: protocol v1's
/// `diarrhoea::code::SERVICE_ERROR`.
const SERVICE_ERROR: i64 = -32000;

pub(crate) fn service(service: &Service) -> TokenStream {
    let client = format_ident!("{}Client", service.ident);
    let the_trait = trait_with_router(service, &client);
    let the_client = client_of(service, &client);
    quote! {
        #the_trait
        #the_client
    }
}

/// The trait as written, each `async fn` as a `fn` returning a `Send` future, and
/// `into_router`.
fn trait_with_router(service: &Service, client: &syn::Ident) -> TokenStream {
    let Service {
        attrs,
        vis,
        ident,
        supertraits,
        methods,
    } = service;
    let colon = (!supertraits.is_empty()).then(|| quote!(:));
    let declarations = methods.iter().map(declaration);
    let routes = methods
        .iter()
        .enumerate()
        .map(|(index, method)| route(ident, client, index, method));
    let router_doc = format!(
        "This service's routes: each method under its wire name (as [`{client}::METHODS`] lists \
         them), described for `$/methods`. Merge routers of several services with \
         [`Router::merge`](diarrhoea::Router::merge)."
    );
    quote! {
        #(#attrs)*
        #vis trait #ident #colon #supertraits {
            #(#declarations)*

            #[doc = #router_doc]
            fn into_router(self) -> ::diarrhoea::Router
            where
                Self: ::core::marker::Sized + ::core::marker::Send + ::core::marker::Sync + 'static,
            {
                let service = ::std::sync::Arc::new(self);
                let router = ::diarrhoea::Router::new();
                #(#routes)*
                router
            }
        }
    }
}

/// `async fn m(..) -> T` as `fn m(..) -> impl Future<Output = T> + Send`, so a service runs on
/// a multi-thread runtime; an implementation still writes `async fn`.
fn declaration(method: &Method) -> TokenStream {
    let mut sig = method.sig.clone();
    sig.asyncness = None;
    let output = method.output.declared();
    let span = match &method.sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => method.sig.ident.span(),
    };
    sig.output = syn::parse_quote_spanned! {span=>
        -> impl ::core::future::Future<Output = #output> + ::core::marker::Send
    };
    let attrs = &method.attrs;
    match &method.default {
        Some(block) => quote! {
            #(#attrs)*
            #sig {
                async move #block
            }
        },
        None => quote! {
            #(#attrs)*
            #sig;
        },
    }
}

/// One method as a Router route: context parameters first, then the positional ones, as a
/// handler takes them; the call passes them in the trait's order.
fn route(
    the_trait: &syn::Ident,
    client: &syn::Ident,
    index: usize,
    method: &Method,
) -> TokenStream {
    let name = &method.ident;
    let context_types: Vec<&Type> = method.contexts().map(|p| &p.ty).collect();
    let positional_types: Vec<&Type> = method.positional().map(|p| &p.ty).collect();
    let closure_params = method.contexts().chain(method.positional()).map(|p| {
        let (binding, ty) = (&p.binding, &p.ty);
        quote_spanned!(ty.span()=> #binding: #ty)
    });
    let arguments = method.params.iter().map(|p| &p.binding);
    let reply = match &method.output {
        Output::Unit | Output::Stream { .. } => quote!(output),
        Output::Value(_) => quote!(::diarrhoea::Json(output)),
        Output::Result { .. } => {
            let code = method.code.unwrap_or(SERVICE_ERROR);
            quote!(::diarrhoea::__private::reply_result(output, #code))
        }
    };
    quote! {
        let router = ::diarrhoea::__private::route::<
            _,
            ::diarrhoea::__private::Params<(#(#context_types,)*), (#(#positional_types,)*)>,
        >(router, &#client::METHODS[#index], {
            let service = ::std::sync::Arc::clone(&service);
            move |#(#closure_params),*| {
                let service = ::std::sync::Arc::clone(&service);
                async move {
                    let output = <Self as #the_trait>::#name(&*service, #(#arguments),*).await;
                    #reply
                }
            }
        });
    }
}

/// `<Trait>Client`: one method per trait method, over a Connection, a Pool or any tower
/// stacks of calls and notifications.
fn client_of(service: &Service, client: &syn::Ident) -> TokenStream {
    let Service {
        attrs,
        vis,
        ident,
        methods,
        ..
    } = service;
    let trait_docs = attrs.iter().filter(|attr| attr.path().is_ident("doc"));
    let about = format!(
        "The typed client of [`{ident}`], made by `#[diarrhoea::service]`.\n\n\
         Each method sends its arguments in the trait's order (not its `#[context]` \
         parameters) and fails with [`diarrhoea::Error`](diarrhoea::Error) when no reply \
         comes. `R` is what it sends through: a [`Connection`](diarrhoea::Connection) (the \
         default), a [`Pool`](diarrhoea::pool::Pool), or tower stacks \
         ([`{client}::from_services`]). Cheap to clone."
    );
    let infos = methods.iter().map(|method| {
        let wire_name = &method.wire_name;
        let kind = if method.notification {
            quote!(Notification)
        } else if matches!(method.output, Output::Stream { .. }) {
            quote!(Stream)
        } else {
            quote!(Request)
        };
        let params = method.positional().map(|p| &p.name);
        quote! {
            ::diarrhoea::typed::MethodInfo::new(
                #wire_name,
                ::diarrhoea::typed::MethodKind::#kind,
                &[#(#params),*],
            )
        }
    });
    let idempotent = methods
        .iter()
        .filter(|method| method.idempotent)
        .map(|method| &method.wire_name);
    let calls = methods.iter().map(|method| client_method(vis, method));
    quote! {
        #(#trait_docs)*
        #[doc = ""]
        #[doc = #about]
        // A program that only serves the trait leaves its client unused.
        #[allow(dead_code)]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct #client<R = ::diarrhoea::Connection> {
            remote: R,
        }

        #[allow(dead_code)]
        impl #client {
            /// Each method's wire name, kind and parameter names, in the trait's order.
            #vis const METHODS: &'static [::diarrhoea::typed::MethodInfo] = &[#(#infos),*];

            /// The wire names of the methods marked `#[rpc(idempotent)]`: a pool may retry them
            /// on another worker ([`PoolBuilder::idempotent`](diarrhoea::pool::PoolBuilder::idempotent)).
            #vis const IDEMPOTENT: &'static [&'static str] = &[#(#idempotent),*];
        }

        #[allow(dead_code)]
        impl<R: ::diarrhoea::typed::Remote> #client<R> {
            /// A client that sends through `remote`: a `Connection` or a `Pool`.
            #vis fn new(remote: R) -> Self {
                #client { remote }
            }

            /// What this client sends through.
            #vis fn remote(&self) -> &R {
                &self.remote
            }

            #(#calls)*
        }

        #[allow(dead_code)]
        impl<C, P> #client<::diarrhoea::typed::Services<C, P>>
        where
            ::diarrhoea::typed::Services<C, P>: ::diarrhoea::typed::Remote,
        {
            /// A client over tower stacks: `caller` for calls (a `Service<Request, Response =
            /// Response>`, such as a `Timeout` around `conn.caller()`) and `poster` for
            /// notifications (a `Service<Request, Response = ()>`).
            #vis fn from_services(caller: C, poster: P) -> Self {
                #client {
                    remote: ::diarrhoea::typed::Services::new(caller, poster),
                }
            }
        }
    }
}

fn client_method(vis: &syn::Visibility, method: &Method) -> TokenStream {
    let Method {
        docs,
        ident,
        wire_name,
        ..
    } = method;
    let params = method.positional().map(|p| {
        let (ident, ty) = (&p.ident, &p.ty);
        quote_spanned!(ty.span()=> #ident: #ty)
    });
    let names: Vec<_> = method.positional().map(|p| &p.ident).collect();
    let args = quote!((#(#names,)*));
    let remote = quote!(::diarrhoea::typed::Remote);
    if let (false, Output::Stream { item, .. }) = (method.notification, &method.output) {
        // Not `async`: nothing is sent until the stream is first polled.
        return quote! {
            #(#docs)*
            #[allow(clippy::too_many_arguments)]
            #vis fn #ident(&self, #(#params),*) -> ::diarrhoea::CallStream<#item> {
                #remote::call_stream::<#item, _>(&self.remote, #wire_name, #args)
            }
        };
    }
    let (output, body) = if method.notification {
        (
            quote!(()),
            quote!(#remote::notify(&self.remote, #wire_name, #args).await),
        )
    } else {
        match &method.output {
            Output::Unit => (
                quote!(()),
                quote!(#remote::call::<(), _>(&self.remote, #wire_name, #args).await),
            ),
            Output::Value(ty) => (
                quote!(#ty),
                quote!(#remote::call::<#ty, _>(&self.remote, #wire_name, #args).await),
            ),
            Output::Stream { .. } => unreachable!("a stream method's client returned above"),
            Output::Result { ok, err } => {
                let code = method.code.unwrap_or(SERVICE_ERROR);
                (
                    quote!(::core::result::Result<#ok, #err>),
                    quote! {
                        ::diarrhoea::__private::split_result::<#ok, #err>(
                            #remote::call::<#ok, _>(&self.remote, #wire_name, #args).await,
                            #code,
                        )
                    },
                )
            }
        }
    };
    quote! {
        #(#docs)*
        #[allow(clippy::too_many_arguments)]
        #vis async fn #ident(&self, #(#params),*) -> ::core::result::Result<#output, ::diarrhoea::Error> {
            #body
        }
    }
}

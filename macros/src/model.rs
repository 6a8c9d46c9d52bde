//! Reads a service trait into what the code generator needs, and rejects, with the span of the
//! offending tokens, every trait that cannot be a service.

use std::collections::HashMap;

use proc_macro2::Span;
use syn::parse::ParseStream;
use syn::spanned::Spanned;
use syn::{
    Attribute, Block, FnArg, GenericArgument, Ident, ItemTrait, LitInt, LitStr, Pat, PathArguments,
    ReturnType, Signature, Token, TraitItem, TraitItemFn, Type, Visibility,
};

/// The most context and positional parameters a handler takes (diarrhoea's `Handler`).
const MAX_CONTEXTS: usize = 4;
const MAX_POSITIONAL: usize = 12;

/// Error codes a method may not choose: protocol v1 and JSON-RPC reserve them.
const RESERVED_CODES: std::ops::RangeInclusive<i64> = -32768..=-32000;
const CANCELLED: i64 = -32800;

/// The attribute's own arguments: `#[diarrhoea::service(namespace = "calc")]`.
#[derive(Default)]
pub(crate) struct Options {
    namespace: Option<LitStr>,
}

impl Options {
    pub(crate) fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut options = Options::default();
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("namespace") {
                let name: LitStr = meta.value()?.parse()?;
                check_wire_name(&name.value(), name.span())?;
                options.namespace = Some(name);
                Ok(())
            } else {
                Err(meta.error("unknown service option; expected `namespace = \"..\"`"))
            }
        });
        syn::parse::Parser::parse2(parser, input.parse()?)?;
        Ok(options)
    }
}

/// A service trait, checked.
pub(crate) struct Service {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) ident: Ident,
    pub(crate) supertraits: syn::punctuated::Punctuated<syn::TypeParamBound, Token![+]>,
    pub(crate) methods: Vec<Method>,
}

/// One `async fn` of the trait.
pub(crate) struct Method {
    /// The method's attributes but `#[rpc]`, for the trait.
    pub(crate) attrs: Vec<Attribute>,
    /// Its doc comments, for the client's method too.
    pub(crate) docs: Vec<Attribute>,
    pub(crate) sig: Signature,
    pub(crate) ident: Ident,
    pub(crate) wire_name: String,
    pub(crate) notification: bool,
    pub(crate) idempotent: bool,
    /// The code of the error reply a `Result` method's `Err` becomes.
    pub(crate) code: Option<i64>,
    pub(crate) params: Vec<Param>,
    pub(crate) output: Output,
    pub(crate) default: Option<Block>,
}

impl Method {
    pub(crate) fn positional(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| !p.context)
    }

    pub(crate) fn contexts(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| p.context)
    }
}

/// A parameter after `&self`.
pub(crate) struct Param {
    /// Its name in the client's method: the trait's, or `argN` for a pattern.
    pub(crate) ident: Ident,
    /// The name a route's closure binds it to, apart from the closure's own names.
    pub(crate) binding: Ident,
    /// Its name in `$/methods` and `METHODS`.
    pub(crate) name: String,
    pub(crate) ty: Type,
    /// `#[context]`: taken from the request, not sent.
    pub(crate) context: bool,
}

/// What a method returns.
pub(crate) enum Output {
    /// Nothing: the reply is `null`.
    Unit,
    /// A value, sent as the reply.
    Value(Type),
    /// `Result<T, E>`: `Ok` is the reply, `Err` an error reply carrying `E`.
    Result { ok: Type, err: Box<Type> },
    /// `StreamReply<T>`: items of type `T`, then the trailer; the client's method returns a
    /// `CallStream<T>`.
    Stream { reply: Type, item: Box<Type> },
}

/// Collects every error of a trait, so one build reports them all.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn at(&mut self, spanned: impl Spanned, message: impl std::fmt::Display) {
        self.push(syn::Error::new(spanned.span(), message));
    }

    fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(errors) => Err(errors),
            None => Ok(value),
        }
    }
}

impl Service {
    pub(crate) fn read(options: Options, item: ItemTrait) -> syn::Result<Self> {
        let mut errors = Errors::default();
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            errors.at(&item.generics, "a service trait cannot be generic");
        }
        if let Some(unsafety) = &item.unsafety {
            errors.at(unsafety, "a service trait cannot be `unsafe`");
        }
        if let Some(auto) = &item.auto_token {
            errors.at(auto, "a service trait cannot be an auto trait");
        }
        let prefix = options
            .namespace
            .map(|ns| format!("{}.", ns.value()))
            .unwrap_or_default();
        let mut methods = Vec::new();
        let mut wire_names: HashMap<String, Ident> = HashMap::new();
        for trait_item in item.items {
            let TraitItem::Fn(function) = trait_item else {
                errors.at(&trait_item, "a service trait holds only `async fn` methods");
                continue;
            };
            match Method::read(function, &prefix) {
                Ok(method) => {
                    if let Some(first) = wire_names.get(&method.wire_name) {
                        errors.at(
                            &method.ident,
                            format!(
                                "`{}` and `{first}` have one wire name, `{}`; rename one with `#[rpc(name = \"..\")]`",
                                method.ident, method.wire_name
                            ),
                        );
                    } else {
                        wire_names.insert(method.wire_name.clone(), method.ident.clone());
                    }
                    methods.push(method);
                }
                Err(error) => errors.push(error),
            }
        }
        errors.finish(Service {
            attrs: item.attrs,
            vis: item.vis,
            ident: item.ident,
            supertraits: item.supertraits,
            methods,
        })
    }
}

/// What `#[rpc(..)]` says of a method.
#[derive(Default)]
struct RpcOptions {
    name: Option<LitStr>,
    notification: bool,
    idempotent: bool,
    code: Option<(i64, Span)>,
}

impl RpcOptions {
    fn read(attrs: &mut Vec<Attribute>, errors: &mut Errors) -> Self {
        let mut options = RpcOptions::default();
        attrs.retain(|attr| {
            if !attr.path().is_ident("rpc") {
                return true;
            }
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("name") {
                    options.name = Some(meta.value()?.parse()?);
                } else if meta.path.is_ident("notification") {
                    options.notification = true;
                } else if meta.path.is_ident("idempotent") {
                    options.idempotent = true;
                } else if meta.path.is_ident("code") {
                    let input = meta.value()?;
                    let negative = input.parse::<Option<Token![-]>>()?.is_some();
                    let number: LitInt = input.parse()?;
                    let value: i64 = number.base10_parse()?;
                    options.code = Some((if negative { -value } else { value }, number.span()));
                } else {
                    return Err(meta.error(
                        "unknown rpc option; expected `name = \"..\"`, `notification`, `idempotent` or `code = N`",
                    ));
                }
                Ok(())
            });
            if let Err(error) = parsed {
                errors.push(error);
            }
            false
        });
        options
    }
}

impl Method {
    fn read(mut function: TraitItemFn, prefix: &str) -> syn::Result<Self> {
        let mut errors = Errors::default();
        let options = RpcOptions::read(&mut function.attrs, &mut errors);
        let sig = &mut function.sig;
        if sig.asyncness.is_none() {
            errors.at(sig.fn_token, "service methods must be `async fn`");
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            errors.at(
                &sig.generics,
                "service methods cannot be generic: the wire needs one concrete type for each parameter",
            );
        }
        for (present, what) in [
            (sig.constness.as_ref().map(Spanned::span), "`const`"),
            (sig.unsafety.as_ref().map(Spanned::span), "`unsafe`"),
            (sig.abi.as_ref().map(Spanned::span), "`extern`"),
            (sig.variadic.as_ref().map(Spanned::span), "variadic"),
        ] {
            if let Some(span) = present {
                errors.push(syn::Error::new(
                    span,
                    format!("service methods cannot be {what}"),
                ));
            }
        }
        match sig.inputs.first() {
            Some(FnArg::Receiver(receiver))
                if receiver.reference.is_some()
                    && receiver.mutability.is_none()
                    && receiver.colon_token.is_none() => {}
            Some(FnArg::Receiver(receiver)) => errors.at(
                receiver,
                "service methods take `&self`: one service value serves calls concurrently",
            ),
            _ => errors.at(
                &sig.ident,
                "service methods take `&self` as their first parameter",
            ),
        }

        let mut params = Vec::new();
        for (index, input) in sig.inputs.iter_mut().enumerate().skip(1) {
            let FnArg::Typed(typed) = input else { continue };
            let mut context = false;
            typed.attrs.retain(|attr| {
                let is_context = attr.path().is_ident("context");
                if is_context {
                    if !matches!(attr.meta, syn::Meta::Path(_)) {
                        errors.at(&attr.meta, "`#[context]` takes no arguments");
                    }
                    context = true;
                }
                !is_context
            });
            let ident = match &*typed.pat {
                Pat::Ident(pat) if pat.subpat.is_none() => pat.ident.clone(),
                _ => Ident::new(&format!("arg{index}"), typed.pat.span()),
            };
            let name = ident.to_string().trim_start_matches("r#").to_owned();
            params.push(Param {
                binding: Ident::new(&format!("__{name}"), ident.span()),
                ident,
                name,
                ty: (*typed.ty).clone(),
                context,
            });
        }
        let contexts = params.iter().filter(|p| p.context).count();
        if contexts > MAX_CONTEXTS {
            errors.at(
                &sig.inputs,
                format!("a service method takes at most {MAX_CONTEXTS} `#[context]` parameters"),
            );
        }
        if params.len() - contexts > MAX_POSITIONAL {
            errors.at(
                &sig.inputs,
                format!("a service method takes at most {MAX_POSITIONAL} parameters besides `#[context]` ones"),
            );
        }

        let output = Output::read(&sig.output);
        if let Output::Result { ok, .. } = &output {
            if stream_item(ok).is_some() {
                errors.at(
                    ok,
                    "a stream method returns `StreamReply<T>`, not a `Result`: an error ends the stream (`StreamReply::try_new`)",
                );
            }
        }
        if options.notification {
            if let ReturnType::Type(_, ty) = &sig.output {
                errors.at(
                    ty,
                    "a notification has no return type: no reply is sent, so nothing could carry it",
                );
            }
            if options.idempotent {
                errors.at(
                    &sig.ident,
                    "a notification cannot be `idempotent`: it is never retried",
                );
            }
        }
        if let Some((code, span)) = options.code {
            if RESERVED_CODES.contains(&code) || code == CANCELLED {
                errors.push(syn::Error::new(
                    span,
                    "codes from -32768 to -32000, and -32800, are reserved for the protocol",
                ));
            }
            if !matches!(output, Output::Result { .. }) {
                errors.push(syn::Error::new(
                    span,
                    "`code` is the code of an `Err`: the method must return `Result<T, E>`",
                ));
            }
        }

        let wire_name = match &options.name {
            Some(name) => {
                if let Err(error) = check_wire_name(&name.value(), name.span()) {
                    errors.push(error);
                }
                format!("{prefix}{}", name.value())
            }
            None => format!("{prefix}{}", sig.ident.to_string().trim_start_matches("r#")),
        };
        let docs = function
            .attrs
            .iter()
            .filter(|attr| attr.path().is_ident("doc"))
            .cloned()
            .collect();
        errors.finish(Method {
            attrs: function.attrs,
            docs,
            ident: sig.ident.clone(),
            sig: function.sig,
            wire_name,
            notification: options.notification,
            idempotent: options.idempotent,
            code: options.code.map(|(code, _)| code),
            params,
            output,
            default: function.default,
        })
    }
}

impl Output {
    fn read(output: &ReturnType) -> Self {
        let ty = match output {
            ReturnType::Default => return Output::Unit,
            ReturnType::Type(_, ty) => &**ty,
        };
        if let Type::Tuple(tuple) = ty {
            if tuple.elems.is_empty() {
                return Output::Unit;
            }
        }
        if let Some(item) = stream_item(ty) {
            return Output::Stream {
                reply: ty.clone(),
                item: Box::new(item),
            };
        }
        if let Type::Path(path) = ty {
            let last = path.path.segments.last().expect("a path has a segment");
            if last.ident == "Result" {
                if let PathArguments::AngleBracketed(args) = &last.arguments {
                    let types: Vec<&Type> = args
                        .args
                        .iter()
                        .filter_map(|arg| match arg {
                            GenericArgument::Type(ty) => Some(ty),
                            _ => None,
                        })
                        .collect();
                    if let [ok, err] = types[..] {
                        return Output::Result {
                            ok: ok.clone(),
                            err: Box::new(err.clone()),
                        };
                    }
                }
            }
        }
        Output::Value(ty.clone())
    }

    /// What the method's future yields, as the trait declares it.
    pub(crate) fn declared(&self) -> proc_macro2::TokenStream {
        match self {
            Output::Unit => quote::quote!(()),
            Output::Value(ty) => quote::quote!(#ty),
            Output::Result { ok, err } => {
                quote::quote!(::core::result::Result<#ok, #err>)
            }
            Output::Stream { reply, .. } => quote::quote!(#reply),
        }
    }
}

/// The item type of `StreamReply<T>` (any path ending in `StreamReply` with one type
/// argument).
fn stream_item(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "StreamReply" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    match (types.next(), types.next()) {
        (Some(item), None) => Some(item.clone()),
        _ => None,
    }
}

/// A wire name the protocol accepts and a Router can route.
fn check_wire_name(name: &str, span: Span) -> syn::Result<()> {
    if name.is_empty() {
        return Err(syn::Error::new(span, "a method name cannot be empty"));
    }
    if name.starts_with("$/") {
        return Err(syn::Error::new(
            span,
            "names starting with `$/` are reserved for the protocol",
        ));
    }
    Ok(())
}

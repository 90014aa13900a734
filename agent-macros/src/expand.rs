//! Generating the registration of a `#[job_agent]` type.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Item, parse::Parser};

use crate::attr::{Args, Kind};

pub(crate) fn job_agent(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand(args, item.clone()) {
        Ok(tokens) => tokens,
        // Emit the item as written too, so the rest of the crate still sees the type.
        Err(err) => {
            let err = err.into_compile_error();
            quote! { #item #err }
        }
    }
}

fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let mut parsed = Args::default();
    syn::meta::parser(|meta| parsed.parse_meta(meta)).parse2(args)?;
    let item: Item = syn::parse2(item)?;
    let (ident, generics) = match &item {
        Item::Struct(s) => (&s.ident, &s.generics),
        Item::Enum(e) => (&e.ident, &e.generics),
        other => return Err(not_a_type(other)),
    };
    if !generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            generics,
            "a #[job_agent] type cannot be generic: the agent builds it from its class name \
             alone, with no type or lifetime arguments; use a concrete type instead",
        ));
    }
    let krate = match &parsed.krate {
        Some(path) => quote!(#path),
        None => quote!(::jobagent),
    };
    let kind = match parsed.kind.map(|(k, _)| k).unwrap_or(Kind::Singleton) {
        Kind::Singleton => quote!(Singleton),
        Kind::Transient => quote!(Transient),
        Kind::Hang => quote!(Hang),
    };
    let type_path = quote!(::core::concat!(
        ::core::module_path!(),
        "::",
        ::core::stringify!(#ident)
    ));
    let class = match &parsed.class {
        Some(lit) => quote!(#lit),
        None => type_path.clone(),
    };
    // The constructor is a function of state values (`fn() -> Self`, `fn(Pool) -> Self`,
    // ...); without one, `Default` builds the job.
    let (build, needs) = match &parsed.constructor {
        Some(path) => (
            quote_spanned!(path.span()=> #krate::__private::Constructor::<_, #ident>::construct(&#path, states)?),
            quote_spanned!(path.span()=> #krate::__private::needs_of::<#ident, _, _>(&#path)),
        ),
        None => (
            quote_spanned!(ident.span()=> <#ident as ::core::default::Default>::default()),
            quote!(::std::vec::Vec::new()),
        ),
    };
    // Every job is registered (when the agent's auto-registration is on) unless it opts out,
    // as on .NET; the id defaults to the type path and the name to the type name.
    let register = if parsed.register == Some(false) {
        if let Some(lit) = [
            &parsed.register_id,
            &parsed.register_name,
            &parsed.register_cron,
        ]
        .into_iter()
        .flatten()
        .next()
        {
            return Err(syn::Error::new(
                lit.span(),
                "`register = false` opts this job out of auto-registration; remove it or the register_* arguments",
            ));
        }
        quote!()
    } else {
        let name_default = ident.to_string();
        let id = parsed
            .register_id
            .as_ref()
            .map(|l| quote!(#l))
            .unwrap_or_else(|| quote!(#type_path));
        let name = parsed
            .register_name
            .as_ref()
            .map(|l| quote!(#l))
            .unwrap_or_else(|| quote!(#name_default));
        let cron = parsed
            .register_cron
            .as_ref()
            .map(|l| quote!(#l))
            .unwrap_or_else(|| quote!(""));
        quote! {
            .with_register(#krate::__private::AutoRegister::new(#id, #name, #cron))
        }
    };
    let on_busy = match parsed.on_busy {
        None => quote!(),
        Some((_, span)) if parsed.kind.is_some_and(|(k, _)| k == Kind::Transient) => {
            return Err(syn::Error::new(
                span,
                "`on_busy` applies to singleton and hang jobs; a transient job starts a new instance for every run",
            ));
        }
        Some((policy, _)) => {
            let variant = syn::Ident::new(policy.variant(), proc_macro2::Span::call_site());
            quote!(.with_on_busy(#krate::__private::BusyPolicy::#variant))
        }
    };
    let stall = match (parsed.stall_after, parsed.on_stall) {
        (None, None) => quote!(),
        (None, Some((_, span))) => {
            return Err(syn::Error::new(
                span,
                "`on_stall` needs `stall_after = \"...\"`: how long the job may go without a console line or a progress change",
            ));
        }
        (Some((ms, _)), on_stall) => {
            let cancel = on_stall.is_some_and(|(c, _)| c);
            quote!(.with_stall(#ms, #cancel))
        }
    };
    Ok(quote! {
        #item

        const _: () = {
            #[allow(unused_variables)]
            fn __agent_sdk_build(
                states: &#krate::__private::States,
            ) -> ::core::result::Result<
                ::std::sync::Arc<dyn #krate::__private::DynJob>,
                #krate::__private::MissingState,
            > {
                let job: #ident = #build;
                ::core::result::Result::Ok(#krate::__private::into_dyn::<#ident>(job))
            }
            fn __agent_sdk_needs() -> ::std::vec::Vec<#krate::__private::Need> {
                #needs
            }
            #krate::__private::inventory::submit! {
                #krate::__private::JobRegistration::new(
                    #class,
                    #type_path,
                    #krate::__private::JobKind::#kind,
                    __agent_sdk_build,
                    __agent_sdk_needs,
                ).with_type(::core::any::TypeId::of::<#ident>) #register #on_busy #stall
            }
        };
    })
}

/// The error for an item that is not a struct or enum, pointing at its keyword and name.
fn not_a_type(item: &Item) -> syn::Error {
    const WANT: &str = "#[job_agent] goes on a struct or enum that implements JobAgent";
    let (tokens, message) = match item {
        Item::Fn(f) => {
            let (fn_token, ident) = (&f.sig.fn_token, &f.sig.ident);
            (
                quote!(#fn_token #ident),
                format!("{WANT}, not on a function"),
            )
        }
        Item::Trait(t) => {
            let (trait_token, ident) = (&t.trait_token, &t.ident);
            (
                quote!(#trait_token #ident),
                format!("{WANT}, not on a trait"),
            )
        }
        Item::Impl(i) => {
            let (impl_token, self_ty) = (&i.impl_token, &i.self_ty);
            let head = match &i.trait_ {
                Some((bang, path, for_token)) => {
                    quote!(#impl_token #bang #path #for_token #self_ty)
                }
                None => quote!(#impl_token #self_ty),
            };
            (
                head,
                format!(
                    "{WANT}: put it on the declaration of `{}`, not on an impl block",
                    quote!(#self_ty)
                ),
            )
        }
        Item::Union(u) => {
            let (union_token, ident) = (&u.union_token, &u.ident);
            (
                quote!(#union_token #ident),
                format!("{WANT}, not on a union"),
            )
        }
        other => (quote!(#other), WANT.to_owned()),
    };
    syn::Error::new_spanned(tokens, message)
}

//! Parsing `#[job_agent(...)]` arguments.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{LitStr, Path};

/// The job kind chosen by a flag.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Singleton,
    Transient,
    Hang,
}

/// Everything `#[job_agent(...)]` can say.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) kind: Option<(Kind, Span)>,
    pub(crate) class: Option<LitStr>,
    pub(crate) register: bool,
    pub(crate) register_id: Option<LitStr>,
    pub(crate) register_name: Option<LitStr>,
    pub(crate) register_cron: Option<LitStr>,
    pub(crate) constructor: Option<Path>,
}

const KNOWN: &str = "singleton, transient, hang, class = \"...\", register, register_id = \"...\", register_name = \"...\", register_cron = \"...\", constructor = \"path::to::fn\"";

impl Args {
    pub(crate) fn parse_meta(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let ident = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        match ident.as_str() {
            "singleton" => self.set_kind(Kind::Singleton, &meta),
            "transient" => self.set_kind(Kind::Transient, &meta),
            "hang" => self.set_kind(Kind::Hang, &meta),
            "register" => {
                self.register = true;
                Ok(())
            }
            "class" => {
                let lit = string(&meta, &self.class)?;
                if lit.value().trim().is_empty() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`class` may not be empty; leave it out to use the type's path",
                    ));
                }
                self.class = Some(lit);
                Ok(())
            }
            "register_id" => {
                self.register_id = Some(string(&meta, &self.register_id)?);
                Ok(())
            }
            "register_name" => {
                self.register_name = Some(string(&meta, &self.register_name)?);
                Ok(())
            }
            "register_cron" => {
                self.register_cron = Some(string(&meta, &self.register_cron)?);
                Ok(())
            }
            "constructor" => {
                if self.constructor.is_some() {
                    return Err(meta.error("`constructor` is given twice"));
                }
                let lit: LitStr = meta.value()?.parse()?;
                self.constructor = Some(lit.parse().map_err(|_| {
                    syn::Error::new(
                        lit.span(),
                        "`constructor` must name a function, e.g. constructor = \"MyJob::new\"",
                    )
                })?);
                Ok(())
            }
            _ => Err(meta.error(format!(
                "unknown job_agent argument; expected one of: {KNOWN}"
            ))),
        }
    }

    fn set_kind(&mut self, kind: Kind, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        if self.kind.is_some() {
            return Err(
                meta.error("choose one job kind: singleton (the default), transient or hang")
            );
        }
        self.kind = Some((
            kind,
            meta.path
                .get_ident()
                .map(|i| i.span())
                .unwrap_or_else(Span::call_site),
        ));
        Ok(())
    }
}

fn string(meta: &ParseNestedMeta<'_>, seen: &Option<LitStr>) -> syn::Result<LitStr> {
    if seen.is_some() {
        return Err(meta.error("this argument is given twice"));
    }
    meta.value()?.parse::<LitStr>().map_err(|e| {
        syn::Error::new(
            e.span(),
            "expected a string literal, e.g. class = \"MyCompany.Jobs.TestJob,MyCompany\"",
        )
    })
}

//! Parsing `#[job_agent(...)]` arguments.

use proc_macro2::Span;
use quote::quote;
use syn::meta::ParseNestedMeta;
use syn::{LitStr, Path, Token};

/// The job kind chosen by a flag.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Singleton,
    Transient,
    Hang,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Singleton => "singleton",
            Kind::Transient => "transient",
            Kind::Hang => "hang",
        }
    }
}

/// Everything `#[job_agent(...)]` can say.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) kind: Option<(Kind, Span)>,
    pub(crate) class: Option<LitStr>,
    /// `register` / `register = true|false`; unset registers too (as .NET does).
    pub(crate) register: Option<bool>,
    pub(crate) register_id: Option<LitStr>,
    pub(crate) register_name: Option<LitStr>,
    pub(crate) register_cron: Option<LitStr>,
    pub(crate) constructor: Option<Path>,
    pub(crate) on_busy: Option<(BusyPolicy, Span)>,
    /// `stall_after = "30s"`, in milliseconds.
    pub(crate) stall_after: Option<(u64, Span)>,
    /// `on_stall = "warn" | "cancel"`: true to cancel.
    pub(crate) on_stall: Option<(bool, Span)>,
    /// `crate = "..."`: the path of jobagent where the dependency is renamed or re-exported.
    pub(crate) krate: Option<Path>,
}

/// `on_busy = "..."`: what a singleton run does when the singleton is busy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum BusyPolicy {
    Reject,
    Discard,
    Replace,
    Queue,
}

impl BusyPolicy {
    /// The `jobagent::BusyPolicy` variant name.
    pub(crate) fn variant(self) -> &'static str {
        match self {
            BusyPolicy::Reject => "Reject",
            BusyPolicy::Discard => "Discard",
            BusyPolicy::Replace => "Replace",
            BusyPolicy::Queue => "Queue",
        }
    }
}

/// The argument names, for "did you mean" hints.
const NAMES: [&str; 13] = [
    "singleton",
    "transient",
    "hang",
    "class",
    "register",
    "register_id",
    "register_name",
    "register_cron",
    "constructor",
    "on_busy",
    "stall_after",
    "on_stall",
    "crate",
];

const KNOWN: &str = "singleton, transient, hang, class = \"...\", register = false, register_id = \"...\", register_name = \"...\", register_cron = \"...\", constructor = \"path::to::fn\", on_busy = \"reject|discard|replace|queue\", stall_after = \"30s\", on_stall = \"warn|cancel\", crate = \"path::to::jobagent\"";

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
                if self.register.is_some() {
                    return Err(meta.error("`register` is given twice"));
                }
                self.register = Some(switch(&meta, "register")?);
                Ok(())
            }
            "class" => {
                let lit = string(
                    &meta,
                    "class",
                    &self.class,
                    "class = \"MyCompany.Jobs.TestJob,MyCompany\"",
                )?;
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
                let lit = string(
                    &meta,
                    "register_id",
                    &self.register_id,
                    "register_id = \"cleanup\"",
                )?;
                self.register_id = Some(lit);
                Ok(())
            }
            "register_name" => {
                let lit = string(
                    &meta,
                    "register_name",
                    &self.register_name,
                    "register_name = \"Clean up old messages\"",
                )?;
                self.register_name = Some(lit);
                Ok(())
            }
            "register_cron" => {
                let lit = string(
                    &meta,
                    "register_cron",
                    &self.register_cron,
                    "register_cron = \"0 3 * * *\"",
                )?;
                self.register_cron = Some(lit);
                Ok(())
            }
            "constructor" => {
                let lit = string(
                    &meta,
                    "constructor",
                    &self.constructor,
                    "constructor = \"MyJob::new\"",
                )?;
                let path = lit.parse().map_err(|_| {
                    syn::Error::new(
                        lit.span(),
                        "`constructor` must be the path of a function that returns the job, \
                         taking no arguments or state values given to the agent, e.g. \
                         constructor = \"MyJob::new\"",
                    )
                })?;
                self.constructor = Some(path);
                Ok(())
            }
            "on_busy" => {
                if self.on_busy.is_some() {
                    return Err(meta.error("`on_busy` is given twice"));
                }
                let lit = string(&meta, "on_busy", &None::<LitStr>, "on_busy = \"queue\"")?;
                let policy = match lit.value().as_str() {
                    "reject" => BusyPolicy::Reject,
                    "discard" => BusyPolicy::Discard,
                    "replace" => BusyPolicy::Replace,
                    "queue" => BusyPolicy::Queue,
                    _ => {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`on_busy` is one of \"reject\" (the default), \"discard\", \"replace\" or \"queue\"",
                        ));
                    }
                };
                self.on_busy = Some((policy, lit.span()));
                Ok(())
            }
            "stall_after" => {
                if self.stall_after.is_some() {
                    return Err(meta.error("`stall_after` is given twice"));
                }
                let lit = string(
                    &meta,
                    "stall_after",
                    &None::<LitStr>,
                    "stall_after = \"30s\"",
                )?;
                let ms = parse_duration(&lit.value()).ok_or_else(|| {
                    syn::Error::new(
                        lit.span(),
                        "`stall_after` is a duration above zero: a number and a unit, ms, s, m or h (\"500ms\", \"30s\", \"5m\", \"1h\")",
                    )
                })?;
                self.stall_after = Some((ms, lit.span()));
                Ok(())
            }
            "on_stall" => {
                if self.on_stall.is_some() {
                    return Err(meta.error("`on_stall` is given twice"));
                }
                let lit = string(&meta, "on_stall", &None::<LitStr>, "on_stall = \"cancel\"")?;
                let cancel = match lit.value().as_str() {
                    "warn" => false,
                    "cancel" => true,
                    _ => {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`on_stall` is \"warn\" (the default: a console warning) or \"cancel\" (also cancel the run)",
                        ));
                    }
                };
                self.on_stall = Some((cancel, lit.span()));
                Ok(())
            }
            "crate" => {
                let lit = string(&meta, "crate", &self.krate, "crate = \"my_sdk\"")?;
                let path = lit.parse_with(Path::parse_mod_style).map_err(|_| {
                    syn::Error::new(
                        lit.span(),
                        "`crate` must be the path jobagent is reachable at, e.g. crate = \"my_sdk\" or crate = \"::platform::jobagent\"",
                    )
                })?;
                self.krate = Some(path);
                Ok(())
            }
            _ => Err(unknown(&meta, &ident)),
        }
    }

    fn set_kind(&mut self, kind: Kind, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        flag(meta, kind.name())?;
        if let Some((first, _)) = self.kind {
            return Err(meta.error(if first == kind {
                format!("`{}` is given twice", kind.name())
            } else {
                format!(
                    "`{}` conflicts with `{}`: a job has one kind, singleton (the default), \
                     transient or hang",
                    kind.name(),
                    first.name()
                )
            }));
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

/// Rejects a value after a flag such as `transient = true`.
/// Milliseconds of `"500ms"`, `"30s"`, `"5m"` or `"1h"` (above zero, at most a year).
pub(crate) fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number
        .checked_mul(scale)
        .filter(|ms| (1..=365 * 24 * 3_600_000).contains(ms))
}

fn flag(meta: &ParseNestedMeta<'_>, name: &str) -> syn::Result<()> {
    if meta.input.is_empty() || meta.input.peek(Token![,]) {
        return Ok(());
    }
    let path = &meta.path;
    let rest: proc_macro2::TokenStream = meta.input.parse()?;
    Err(syn::Error::new_spanned(
        quote!(#path #rest),
        format!("`{name}` takes no value; write #[job_agent({name})]"),
    ))
}

/// Parses a flag that may be switched off: `name`, `name = true` or `name = false`.
fn switch(meta: &ParseNestedMeta<'_>, name: &str) -> syn::Result<bool> {
    if meta.input.is_empty() || meta.input.peek(Token![,]) {
        return Ok(true);
    }
    let expected = || format!("`{name}` takes `true` or `false`, e.g. {name} = false");
    let value = meta.value()?;
    if value.peek(syn::LitBool) {
        let lit: syn::LitBool = value.parse()?;
        return Ok(lit.value);
    }
    Err(bad_value(meta, value, expected())?)
}

/// The error for a value of the wrong kind, covering the whole value up to the next comma.
fn bad_value(
    meta: &ParseNestedMeta<'_>,
    value: syn::parse::ParseStream<'_>,
    expected: String,
) -> syn::Result<syn::Error> {
    let mut bad = proc_macro2::TokenStream::new();
    while !value.is_empty() && !value.peek(Token![,]) {
        let tt: proc_macro2::TokenTree = value.parse()?;
        bad.extend([tt]);
    }
    if bad.is_empty() {
        return Ok(meta.error(expected));
    }
    Ok(syn::Error::new_spanned(bad, expected))
}

/// Parses `name = "..."`, once.
fn string<T>(
    meta: &ParseNestedMeta<'_>,
    name: &str,
    seen: &Option<T>,
    example: &str,
) -> syn::Result<LitStr> {
    if seen.is_some() {
        return Err(meta.error(format!("`{name}` is given twice")));
    }
    let expected = || format!("`{name}` takes a string literal, e.g. {example}");
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(expected()));
    }
    let value = meta.value()?;
    if value.peek(LitStr) {
        return value.parse();
    }
    Err(bad_value(meta, value, expected())?)
}

fn unknown(meta: &ParseNestedMeta<'_>, ident: &str) -> syn::Error {
    if ident.is_empty() {
        return meta.error(format!(
            "unknown #[job_agent] argument; expected one of: {KNOWN}"
        ));
    }
    let near = NAMES
        .iter()
        .map(|name| (strsim::damerau_levenshtein(ident, name), *name))
        .filter(|&(d, _)| d <= 2 && d * 3 <= ident.len())
        .min();
    match near {
        Some((_, name)) => meta.error(format!(
            "unknown #[job_agent] argument `{ident}`; did you mean `{name}`?"
        )),
        None => meta.error(format!(
            "unknown #[job_agent] argument `{ident}`; expected one of: {KNOWN}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_take_a_number_and_a_unit() {
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("30s"), Some(30_000));
        assert_eq!(parse_duration(" 5m "), Some(300_000));
        assert_eq!(parse_duration("1h"), Some(3_600_000));
        for bad in [
            "",
            "30",
            "s",
            "0s",
            "1.5s",
            "-1s",
            "10 days",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_hint_distance_counts_a_swap_once() {
        assert_eq!(strsim::damerau_levenshtein("singelton", "singleton"), 1);
        assert_eq!(strsim::damerau_levenshtein("regster_id", "register_id"), 1);
    }
}

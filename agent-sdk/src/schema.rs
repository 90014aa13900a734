//! Hangfire schema names: which the agent accepts, and how they are quoted in SQL.

/// Checks a Hangfire schema name as PostgreSQL takes a quoted identifier (and
/// Hangfire.PostgreSql its `SchemaName`): 1 to 63 bytes, no NUL. Any other character,
/// `-`, spaces or `"` included, is fine: the name is only ever used through
/// [`quote_ident`].
pub(crate) fn check_schema(schema: &str) -> Result<(), String> {
    if schema.is_empty() || schema.len() > 63 || schema.contains('\0') {
        Err(format!(
            "schema `{}` must be 1 to 63 bytes long and hold no NUL character",
            schema
                .chars()
                .filter(|c| *c != '\0')
                .take(64)
                .collect::<String>()
        ))
    } else {
        Ok(())
    }
}

/// Quotes a name as an SQL identifier: in double quotes, a `"` doubled.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

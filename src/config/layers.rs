//! Passes 1 and 2 of a load: the file's structure checked against the schema, then the
//! `CLAMGATE_*` environment laid over it, and named tables over their template.

use super::*;
use crate::cache::RedisUrl;

/// Walks `table`, at `place`, against the schema. Every unknown key and every value of the wrong
/// type is an error; either is removed from the table so that the rest can still be deserialized.
pub(super) fn check_table(
    schema: &Schema,
    table: &mut Table,
    place: &Place,
    errors: &mut Vec<ConfigError>,
    rejected: &mut BTreeSet<String>,
) {
    let names: Vec<String> = table.keys().cloned().collect();
    for name in names {
        let here = place.child(&name);
        // A quoted key with a dot (`"clamd.address" = ...`) is one key, never a path.
        let plain = !name.contains('.');
        let is_table = plain && schema.tables.contains(&here.schema);
        let template = schema.named.get(&here.schema).filter(|_| plain && place.instance.is_none());
        // `(suffix of the key, message)`; the suffix is `[i]` for an element of an array.
        let problems = match table.get_mut(&name) {
            Some(Value::Table(inner)) if is_table => {
                check_table(schema, inner, &here, errors, rejected);
                Vec::new()
            }
            Some(Value::Table(inner)) if template.is_some() => {
                let template = template.map_or("", String::as_str);
                check_named_tables(schema, inner, &here, template, errors, rejected);
                Vec::new()
            }
            Some(other) if is_table || template.is_some() => {
                vec![(String::new(), format!("expected a table, found {}", a_type(other)))]
            }
            Some(value) if plain && schema.keys.contains_key(&here.schema) => {
                value_problems(schema.keys[&here.schema].kind, value)
            }
            _ => vec![(String::new(), schema.unknown_key_message(place, &name))],
        };
        if !problems.is_empty() {
            table.remove(&name);
            rejected.extend(schema.leaves_under(&here.schema).map(|leaf| here.show(leaf)));
            for (suffix, message) in problems {
                errors.push(ConfigError::new(format!("{}{suffix}", here.shown), message));
            }
        }
    }
}

/// Walks a table of named tables (`[policies]`, at `place`): each name must be allowed and each
/// value a table with keys of `template`. A bad name is an error, and so is every problem inside
/// its table; then the table is dropped.
pub(super) fn check_named_tables(
    schema: &Schema,
    table: &mut Table,
    place: &Place,
    template: &str,
    errors: &mut Vec<ConfigError>,
    rejected: &mut BTreeSet<String>,
) {
    let names: Vec<String> = table.keys().cloned().collect();
    for name in names {
        let shown = join(&place.shown, &name);
        let mut problems = Vec::new();
        match policy_name(&name) {
            Ok(()) => {}
            Err(NameError::Reserved(message)) => problems.push(format!("{message}; set its keys there")),
            Err(NameError::Invalid(message)) => problems.push(message),
        }
        match table.get_mut(&name) {
            Some(Value::Table(inner)) => {
                let here = Place {
                    schema: template.to_string(),
                    shown: shown.clone(),
                    instance: Some((template.to_string(), shown.clone())),
                };
                check_table(schema, inner, &here, errors, rejected);
            }
            Some(other) => problems.push(format!("expected a table, found {}", a_type(other))),
            None => {}
        }
        if !problems.is_empty() {
            table.remove(&name);
            for message in problems {
                errors.push(ConfigError::new(shown.clone(), message));
            }
        }
    }
}

/// Why `value` may not be given for a key of `kind`, as `(suffix, message)`: the suffix is empty
/// for the value itself and `[i]` for element `i` of an array. No problems: it may.
pub(super) fn value_problems(kind: Kind, value: &Value) -> Vec<(String, String)> {
    match (kind, value) {
        (Kind::StrList | Kind::RedisClusterSeeds | Kind::Origins, Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| Some((format!("[{i}]"), item_problem(kind, item)?)))
            .collect(),
        _ => check_value(kind, value).err().map(|message| (String::new(), message)).into_iter().collect(),
    }
}

/// Why element `item` of a list of `kind` may not be given, if it may not.
fn item_problem(kind: Kind, item: &Value) -> Option<String> {
    let Some(text) = item.as_str() else {
        return Some(format!("expected a string, found {}", a_type(item)));
    };
    match kind {
        // The one parser of Redis URLs, then what a cluster seed must be.
        Kind::RedisClusterSeeds => RedisUrl::parse_cluster_seed(text).err(),
        Kind::Origins => text.parse::<crate::fetch::Origin>().err(),
        _ => None,
    }
}

/// Whether `value` may be given for a key of `kind`. Messages show the value only for kinds that
/// never hold a secret (a Redis URL's parser redacts its password).
pub(super) fn check_value(kind: Kind, value: &Value) -> Result<(), String> {
    match (kind, value) {
        (Kind::Str, Value::String(_)) | (Kind::Bool, Value::Boolean(_)) => Ok(()),
        (Kind::StrList | Kind::RedisClusterSeeds | Kind::Origins, Value::Array(items))
            if items.iter().all(|item| item_problem(kind, item).is_none()) =>
        {
            Ok(())
        }
        (Kind::RedisUrl, Value::String(s)) if s.is_empty() => {
            Err("must not be empty; remove the key to use the in-process cache".to_string())
        }
        (Kind::RedisUrl, Value::String(s)) => s.parse::<RedisUrl>().map(|_| ()),
        (Kind::Int, Value::Integer(n)) if *n >= 0 => Ok(()),
        (Kind::Int, Value::Integer(n)) => Err(format!("expected a non-negative integer, found {n}")),
        (Kind::SocketAddr, Value::String(s)) if s.parse::<SocketAddr>().is_ok() => Ok(()),
        // The one parser of a clamd address, whose messages say what is wrong.
        (Kind::ClamdAddress, Value::String(s)) => {
            s.parse::<crate::clamd::ClamdAddress>().map(|_| ()).map_err(|err| err.to_string())
        }
        (Kind::Enum(names), Value::String(s)) if names.contains(&s.as_str()) => Ok(()),
        (Kind::SocketAddr | Kind::Enum(_), Value::String(s)) => {
            Err(format!("expected {}, found {s:?}", kind.expected()))
        }
        (kind, other) => Err(format!("expected {}, found {}", kind.expected(), a_type(other))),
    }
}

// ---------------------------------------------------------------------------------------------
// Pass 2: the environment

/// Applies every `CLAMGATE_*` variable over `table`. An empty value for an `Option` key unsets
/// it (so a deployment can turn off a Redis URL that the file sets). A variable for a key of a
/// named table (`CLAMGATE_POLICIES_MIRROR_CACHE_MODE`) may create the table.
pub(super) fn apply_env(
    schema: &Schema,
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
    errors: &mut Vec<ConfigError>,
    rejected: &mut BTreeSet<String>,
    from_env: &mut BTreeMap<String, String>,
) {
    // Sorted for a stable error order; a repeated name keeps its last value, as a shell does.
    let vars: BTreeMap<String, String> =
        env.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX) && name != CONFIG_PATH_ENV).collect();
    // The names the file gives named tables, for suggestions.
    let file_names: BTreeSet<String> = schema
        .named
        .keys()
        .filter_map(|path| table.get(path).and_then(Value::as_table))
        .flat_map(|named| named.keys().cloned())
        .collect();
    for (name, raw) in vars {
        let (path, key) = match schema.env_key(&name) {
            Ok(Some(found)) => found,
            Ok(None) => {
                let mut message = "unknown variable: it matches no config key".to_string();
                if let Some(suggestion) = schema.env_suggestion(&name, &file_names) {
                    message.push_str(&format!("; did you mean {suggestion}?"));
                }
                errors.push(ConfigError::new(name, message));
                continue;
            }
            Err(message) => {
                errors.push(ConfigError::new(name, message));
                continue;
            }
        };
        if key.optional && raw.is_empty() {
            remove_path(table, &path);
            rejected.remove(&path);
            from_env.insert(path, name);
            continue;
        }
        let problems = match env_value(key.kind, raw) {
            Ok(value) => match value_problems(key.kind, &value)[..] {
                [] => {
                    insert_path(table, &path, value);
                    rejected.remove(&path);
                    from_env.insert(path, name);
                    continue;
                }
                ref problems => problems.to_vec(),
            },
            Err(message) => vec![(String::new(), message)],
        };
        rejected.insert(path.clone());
        for (suffix, message) in problems {
            errors.push(ConfigError::new(&name, format!("invalid value for {path}{suffix}: {message}")));
        }
    }
}

/// The TOML value an environment variable stands for: strings as given, integers and booleans
/// parsed, lists split at commas (each element trimmed; an empty value is an empty list).
pub(super) fn env_value(kind: Kind, raw: String) -> Result<Value, String> {
    let value = match kind {
        Kind::Int => match raw.parse::<i64>() {
            Ok(n) => Value::Integer(n),
            Err(_) => return Err(format!("expected an integer, found {raw:?}")),
        },
        Kind::Bool => match raw.as_str() {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => return Err(format!("expected true or false, found {raw:?}")),
        },
        Kind::StrList | Kind::RedisClusterSeeds | Kind::Origins if raw.trim().is_empty() => {
            Value::Array(Vec::new())
        }
        Kind::StrList | Kind::RedisClusterSeeds | Kind::Origins => {
            Value::Array(raw.split(',').map(|item| Value::String(item.trim().to_string())).collect())
        }
        Kind::Str | Kind::SocketAddr | Kind::ClamdAddress | Kind::RedisUrl | Kind::Enum(_) => {
            Value::String(raw)
        }
    };
    Ok(value)
}

pub(super) fn insert_path(table: &mut Table, path: &str, value: Value) {
    let (parents, name) = path.rsplit_once('.').map_or(("", path), |(parents, name)| (parents, name));
    let mut current = table;
    for segment in parents.split('.').filter(|segment| !segment.is_empty()) {
        let entry = current.entry(segment).or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            // Pass 1 already reported and removed a non-table here; this is defensive.
            *entry = Value::Table(Table::new());
        }
        let Value::Table(next) = entry else { return };
        current = next;
    }
    current.insert(name.to_string(), value);
}

/// Lays each named table over a copy of its template table (`[policies.mirror]` over `[policy]`),
/// once the file and the environment are applied, so that it inherits what it does not set.
pub(super) fn inherit_named_tables(schema: &Schema, table: &mut Table) {
    for (path, template) in &schema.named {
        let base = get_path(table, template).and_then(Value::as_table).cloned().unwrap_or_default();
        if let Some(Value::Table(named)) = table.get_mut(path.as_str()) {
            for (_, value) in named.iter_mut() {
                if let Value::Table(own) = value {
                    let mut merged = base.clone();
                    merge_tables(&mut merged, std::mem::take(own));
                    *own = merged;
                }
            }
        }
    }
}

/// Writes every value of `over` into `into`, merging tables present in both.
pub(super) fn merge_tables(into: &mut Table, over: Table) {
    for (name, value) in over {
        match (into.get_mut(&name), value) {
            (Some(Value::Table(below)), Value::Table(above)) => merge_tables(below, above),
            (_, value) => {
                into.insert(name, value);
            }
        }
    }
}

pub(super) fn get_path<'t>(table: &'t Table, path: &str) -> Option<&'t Value> {
    let (parents, name) = path.rsplit_once('.').map_or(("", path), |(parents, name)| (parents, name));
    let mut current = table;
    for segment in parents.split('.').filter(|segment| !segment.is_empty()) {
        current = current.get(segment)?.as_table()?;
    }
    current.get(name)
}

pub(super) fn remove_path(table: &mut Table, path: &str) {
    let (parents, name) = path.rsplit_once('.').map_or(("", path), |(parents, name)| (parents, name));
    let mut current = table;
    for segment in parents.split('.').filter(|segment| !segment.is_empty()) {
        match current.get_mut(segment) {
            Some(Value::Table(next)) => current = next,
            _ => return,
        }
    }
    current.remove(name);
}

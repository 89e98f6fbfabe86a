//! The schema: every key path, its type and its environment variable, derived from the
//! sections' defaults.

use super::*;

pub(super) static SCHEMA: LazyLock<Schema> = LazyLock::new(Schema::build);

/// `Option` keys: a default of `None` is absent from the serialized defaults.
pub(super) const OPTIONAL_KEYS: &[(&str, Kind)] = &[
    ("cache.redis_url", Kind::RedisUrl),
    ("cache.redis_username", Kind::Str),
    ("cache.redis_password", Kind::Str),
    ("cache.redis_tls_ca_file", Kind::Str),
    ("cache.hmac_key_file", Kind::Str),
    ("cache.hmac_previous_key_file", Kind::Str),
    ("listen.grpc_token_file", Kind::Str),
    ("listen.grpc_tls_cert_file", Kind::Str),
    ("listen.grpc_tls_key_file", Kind::Str),
    ("listen.grpc_tls_client_ca_file", Kind::Str),
    ("listen.http_addr", Kind::SocketAddr),
    ("listen.http_token_file", Kind::Str),
    ("listen.http_scan_token_file", Kind::Str),
    ("fetch.tls_ca_file", Kind::Str),
    ("policy.skip.max_bytes", Kind::Int),
    ("policy.block.html_template_file", Kind::Str),
    ("policy.block.redirect_url", Kind::Str),
];

/// Tables of named tables, each shaped like a template table: `[policies.NAME]` takes the keys
/// of `[policy]`. An empty map serializes to an empty table, which shows nothing of its shape.
pub(super) const NAMED_TABLES: &[(&str, &str)] = &[("policies", "policy")];

/// Keys serialized as strings (or arrays of strings) whose values are narrower than any string.
pub(super) fn narrower_kind(path: &str) -> Option<Kind> {
    match path {
        "listen.grpc_addr" | "listen.admin_addr" => Some(Kind::SocketAddr),
        "clamd.address" => Some(Kind::ClamdAddress),
        "cache.redis_cluster_urls" => Some(Kind::RedisClusterSeeds),
        "fetch.origins" => Some(Kind::Origins),
        "clamd.scan_method" => Some(Kind::Enum(&ScanMethod::NAMES)),
        "policy.on_miss" => Some(Kind::Enum(&OnMiss::NAMES)),
        "log.format" => Some(Kind::Enum(&LogFormat::NAMES)),
        "policy.cache_mode" => Some(Kind::Enum(&CacheMode::NAMES)),
        _ if path.starts_with("policy.on_unscanned.") => Some(Kind::Enum(&UnscannedAction::NAMES)),
        _ => None,
    }
}

/// The type of a key, as the file and the environment may spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Str,
    /// Every integer key is unsigned.
    Int,
    Bool,
    /// A string holding `IP:PORT`.
    SocketAddr,
    /// A string that [`crate::clamd::ClamdAddress`] parses.
    ClamdAddress,
    /// A string that [`crate::cache::RedisUrl`] parses.
    RedisUrl,
    /// An array of Redis URLs, each a seed node of a Redis Cluster; in the environment,
    /// comma-separated.
    RedisClusterSeeds,
    /// An array of `"HOST = URL"` origins ([`crate::fetch::Origin`]); in the environment,
    /// comma-separated.
    Origins,
    /// A string, one of these names.
    Enum(&'static [&'static str]),
    /// An array of strings; in the environment, comma-separated.
    StrList,
}

impl Kind {
    /// What a value of this kind is, for "expected ..., found ..." messages.
    pub(super) fn expected(self) -> String {
        match self {
            Kind::Str => "a string".to_string(),
            Kind::Int => "an integer".to_string(),
            Kind::Bool => "a boolean".to_string(),
            Kind::SocketAddr => {
                "an IP address and port such as \"127.0.0.1:9090\" or \"[::1]:9090\"".to_string()
            }
            Kind::ClamdAddress => "\"tcp://HOST:PORT\" or \"unix:///absolute/path\"".to_string(),
            Kind::Enum(names) => one_of(names),
            Kind::StrList => "an array of strings".to_string(),
            Kind::RedisUrl => "a Redis URL such as \"redis://127.0.0.1:6379\"".to_string(),
            Kind::Origins => {
                "an array of \"HOST = URL\" strings such as [\"example.com = http://10.0.0.5:8080\"]"
                    .to_string()
            }
            Kind::RedisClusterSeeds => {
                "an array of Redis URLs such as [\"redis://redis-1:6379\"]".to_string()
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct Key {
    pub(super) kind: Kind,
    pub(super) optional: bool,
}

#[derive(Debug, Default)]
pub(super) struct Schema {
    /// Leaf keys by dotted path.
    pub(super) keys: BTreeMap<String, Key>,
    /// Table paths (`policy`, `policy.on_unscanned`); the root is not listed.
    pub(super) tables: BTreeSet<String>,
    /// Tables of named tables (`policies`), each with its template table (`policy`).
    pub(super) named: BTreeMap<String, String>,
    /// Environment variable name to key path.
    pub(super) env: BTreeMap<String, String>,
}

impl Schema {
    pub(super) fn build() -> Schema {
        let defaults =
            Table::try_from(Config::default()).expect("the default config serializes to a TOML table");
        let mut schema = Schema::default();
        schema.add_table("", &defaults);
        for &(path, kind) in OPTIONAL_KEYS {
            schema.add_key(path, kind, true);
        }
        for &(path, template) in NAMED_TABLES {
            schema.named.insert(path.to_string(), template.to_string());
        }
        schema
    }

    pub(super) fn add_table(&mut self, prefix: &str, table: &Table) {
        for (name, value) in table {
            let path = join(prefix, name);
            let kind = match value {
                Value::Table(inner) => {
                    self.add_table(&path, inner);
                    continue;
                }
                Value::String(_) => narrower_kind(&path).unwrap_or(Kind::Str),
                Value::Integer(_) => Kind::Int,
                Value::Boolean(_) => Kind::Bool,
                Value::Array(items) if items.iter().all(Value::is_str) => {
                    narrower_kind(&path).unwrap_or(Kind::StrList)
                }
                // A new field of another type needs a `Kind`; the schema tests fail until then.
                other => panic!("config key {path}: no loader support for TOML type {}", other.type_str()),
            };
            self.add_key(&path, kind, false);
        }
    }

    pub(super) fn add_key(&mut self, path: &str, kind: Kind, optional: bool) {
        self.env.insert(env_name(path), path.to_string());
        self.keys.insert(path.to_string(), Key { kind, optional });
        let mut table = parent(path);
        while !table.is_empty() {
            self.tables.insert(table.to_string());
            table = parent(table);
        }
    }

    /// Paths of every leaf at or below `path`.
    pub(super) fn leaves_under<'s>(&'s self, path: &'s str) -> impl Iterator<Item = &'s String> + 's {
        self.keys.keys().filter(move |key| {
            *key == path || key.strip_prefix(path).is_some_and(|rest| rest.starts_with('.'))
        })
    }

    /// The names directly inside table `prefix` ("" is the root).
    pub(super) fn children<'s>(&'s self, prefix: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.keys
            .keys()
            .chain(&self.tables)
            .chain(self.named.keys())
            .filter(move |path| parent(path) == prefix)
            .map(|path| last_segment(path))
    }

    /// For an unknown key `name` in the table at `place`.
    pub(super) fn unknown_key_message(&self, place: &Place, name: &str) -> String {
        let mut message = match place.shown.as_str() {
            "" => format!("unknown key {name:?} at the top level"),
            shown => format!("unknown key {name:?} in [{shown}]"),
        };
        // A typo of a neighbour, else the same name in another table.
        let suggestion = closest(name, self.children(&place.schema)).map(str::to_string).or_else(|| {
            self.keys
                .keys()
                .chain(&self.tables)
                .find(|path| last_segment(path) == name && parent(path) != place.schema)
                .map(|path| place.show(path))
        });
        if let Some(suggestion) = suggestion {
            message.push_str(&format!("; did you mean {suggestion:?}?"));
        }
        message
    }

    /// The key a `CLAMGATE_*` variable sets: its path as shown (`policies.mirror.cache_mode`) and
    /// its schema entry; `Ok(None)` when it names no key, `Err` when it names a key of a named
    /// table under a name that is not allowed.
    pub(super) fn env_key(&self, var: &str) -> Result<Option<(String, &Key)>, String> {
        if let Some((path, key)) = self.env.get(var).and_then(|path| self.keys.get_key_value(path)) {
            return Ok(Some((path.clone(), key)));
        }
        for (table, template) in &self.named {
            // `CLAMGATE_POLICIES_<NAME>_<KEY>`: a name holds no `_`, so the first one ends it.
            let Some((name, rest)) =
                var.strip_prefix(&format!("{}_", env_name(table))).and_then(|rest| rest.split_once('_'))
            else {
                continue;
            };
            let template_var = format!("{}_{rest}", env_name(template));
            let Some((path, key)) =
                self.env.get(&template_var).and_then(|path| self.keys.get_key_value(path))
            else {
                continue;
            };
            let name = env_table_name(name).map_err(|message| match message {
                NameError::Reserved(message) => format!("{message}; set {template_var} instead"),
                NameError::Invalid(message) => message,
            })?;
            let shown = format!("{table}.{name}{}", &path[template.len()..]);
            return Ok(Some((shown, key)));
        }
        Ok(None)
    }

    /// Variables near `var`, for "did you mean": every variable of a key, and those of named
    /// tables under the `names` the file uses and under the name `var` itself seems to give.
    pub(super) fn env_suggestion(&self, var: &str, names: &BTreeSet<String>) -> Option<String> {
        let mut candidates: Vec<String> = self.env.keys().cloned().collect();
        for (table, template) in &self.named {
            let prefix = format!("{}_", env_name(table));
            let own = var.strip_prefix(&prefix).and_then(|rest| rest.split_once('_')).map(|(name, _)| name);
            let names = names.iter().map(|name| name.to_ascii_uppercase()).chain(own.map(str::to_string));
            let template_prefix = format!("{}_", env_name(template));
            for name in names.collect::<BTreeSet<_>>() {
                for template_var in self.env.keys() {
                    if let Some(rest) = template_var.strip_prefix(&template_prefix) {
                        candidates.push(format!("{prefix}{name}_{rest}"));
                    }
                }
            }
        }
        closest(var, candidates.iter().map(String::as_str)).map(str::to_string)
    }
}

/// Where a table of the file is: its path in the schema, and the path shown in messages. The two
/// differ inside a named table, which is checked against its template: `[policies.mirror]` is
/// shown, `[policy]` is looked up.
#[derive(Debug, Clone)]
pub(super) struct Place {
    pub(super) schema: String,
    pub(super) shown: String,
    /// Inside a named table: the template's path and the named table's (`policy`,
    /// `policies.mirror`).
    pub(super) instance: Option<(String, String)>,
}

impl Place {
    pub(super) fn root() -> Place {
        Place { schema: String::new(), shown: String::new(), instance: None }
    }

    pub(super) fn child(&self, name: &str) -> Place {
        Place {
            schema: join(&self.schema, name),
            shown: join(&self.shown, &shown_key(name)),
            instance: self.instance.clone(),
        }
    }

    /// A schema path as shown from here: inside `[policies.mirror]`, `policy.x` is
    /// `policies.mirror.x`.
    pub(super) fn show(&self, path: &str) -> String {
        match &self.instance {
            Some((template, named)) if path == template => named.clone(),
            Some((template, named)) => match path.strip_prefix(template.as_str()) {
                Some(rest) if rest.starts_with('.') => format!("{named}{rest}"),
                _ => path.to_string(),
            },
            None => path.to_string(),
        }
    }
}

/// Why a policy name is refused.
pub(super) enum NameError {
    /// The name `default`.
    Reserved(String),
    Invalid(String),
}

impl NameError {
    pub(super) fn message(self) -> String {
        match self {
            NameError::Reserved(message) | NameError::Invalid(message) => message,
        }
    }
}

/// A policy name: 1 to 32 lower-case ASCII letters and digits, not `default`.
pub(super) fn policy_name(name: &str) -> Result<(), NameError> {
    if name == DEFAULT_POLICY_NAME {
        return Err(NameError::Reserved(format!(
            "the policy name {DEFAULT_POLICY_NAME:?} is reserved for [policy], the policy of routes that name none"
        )));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if (1..=MAX_POLICY_NAME_CHARS).contains(&name.len()) && name.chars().all(allowed) {
        return Ok(());
    }
    Err(NameError::Invalid(format!(
        "invalid policy name {name:?}: a name is 1 to {MAX_POLICY_NAME_CHARS} lower-case letters (a-z) \
         and digits, because it travels in Envoy's gRPC metadata (x-clamgate-policy) and in \
         environment variable names (CLAMGATE_POLICIES_<NAME>_<KEY>)"
    )))
}

/// The policy name written, in upper case, in a variable name: `MIRROR` is `mirror`.
pub(super) fn env_table_name(written: &str) -> Result<String, NameError> {
    let allowed = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit();
    if !written.is_empty() && !written.chars().all(allowed) {
        return Err(NameError::Invalid(format!(
            "invalid policy name {written:?}: in a variable name, a policy name is written in upper \
             case (CLAMGATE_POLICIES_MIRROR_CACHE_MODE sets cache_mode of [policies.mirror])"
        )));
    }
    let name = written.to_ascii_lowercase();
    policy_name(&name)?;
    Ok(name)
}

/// A key as TOML writes it: bare when it can be (`cache_mode`), else quoted (`""`,
/// `"clamd.address"`), so that an error always names a key one can find in the file.
fn shown_key(name: &str) -> String {
    let bare = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

pub(super) fn join(prefix: &str, name: &str) -> String {
    match prefix {
        "" => name.to_string(),
        _ => format!("{prefix}.{name}"),
    }
}

pub(super) fn parent(path: &str) -> &str {
    path.rsplit_once('.').map_or("", |(parent, _)| parent)
}

pub(super) fn last_segment(path: &str) -> &str {
    path.rsplit_once('.').map_or(path, |(_, last)| last)
}

/// `clamd.connect_timeout_ms` → `CLAMGATE_CLAMD_CONNECT_TIMEOUT_MS`.
pub(super) fn env_name(path: &str) -> String {
    format!("{ENV_PREFIX}{}", path.replace('.', "_").to_ascii_uppercase())
}

/// The candidate nearest to `name` by edit distance, if near enough to be a typo of it.
pub(super) fn closest<'c>(name: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    candidates
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|&(distance, _)| distance <= limit)
        .min()
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, in characters.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
pub(super) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("{name:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// "a string", "an integer", ... for a TOML value.
pub(super) fn a_type(value: &Value) -> String {
    let name = value.type_str();
    match name {
        "integer" | "array" => format!("an {name}"),
        _ => format!("a {name}"),
    }
}

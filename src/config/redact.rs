//! Secrets out of what is logged: passwords in URLs.

/// `url` with its password replaced by `***`: in the userinfo of `scheme://user:password@host`
/// (a userinfo without `:` is hidden whole) and in `pass=`/`password=` query parameters.
pub(super) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // The last `@` ends the userinfo even if the password holds an unencoded `/`, `?` or `@`:
    // better to hide too much than too little.
    let (userinfo, host_and_rest) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let mut redacted = scheme.to_string();
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) if !user.contains(['/', '?', '#']) => redacted.push_str(&format!("{user}:***@")),
            _ => redacted.push_str("***@"),
        }
    }
    match host_and_rest.split_once('?') {
        None => redacted.push_str(host_and_rest),
        Some((before, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _))
                        if name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password") =>
                    {
                        format!("{name}=***")
                    }
                    _ => param.to_string(),
                })
                .collect();
            redacted.push_str(&format!("{before}?{}", params.join("&")));
        }
    }
    redacted
}

//! Keeps secrets out of anything a person can read: log lines, errors and status output.

/// Query parameters whose values are secrets (rule 7 of the contract).
const SENSITIVE: [&str; 4] = ["access_token", "client_secret", "password", "refresh_token"];

pub const MASK: &str = "<redacted>";

/// The URL with the values of secret query parameters replaced by a mask.
/// `text` with every control character (C0, DEL, C1: newlines, escape sequences) written as
/// `\u{…}`: text from the server cannot start a log line of its own (with a forged journald
/// priority) or steer a terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// JSON text with DEL and the C1 control characters written as `\u00XX`. serde_json escapes
/// only C0 ones, and some terminals act on C1 (U+009B is a CSI). JSON's own syntax is ASCII, so
/// they can only be inside strings, where the escape means the same character.
pub fn json_printable(json: String) -> String {
    if !json.chars().any(|c| ('\u{7f}'..='\u{9f}').contains(&c)) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

pub fn url(url: &str) -> String {
    let Some((base, rest)) = url.split_once('?') else {
        return url.to_owned();
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if SENSITIVE.contains(&name) => format!("{name}={MASK}"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{base}?{}", query.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Text from the server (which may echo a token back) with every known secret masked.
pub fn text(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret.as_str(), MASK);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_no_c1_control_raw() {
        let json = serde_json::to_string(&serde_json::json!({"m": "a\u{9b}31mb\u{7f}"})).unwrap();
        let out = json_printable(json);
        assert!(!out.contains(['\u{9b}', '\u{7f}']), "{out}");
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["m"], "a\u{9b}31mb\u{7f}");
    }

    #[test]
    fn masks_secret_parameters_only() {
        assert_eq!(
            url("http://h/file/download?access_token=abc&package_name=p&version=6"),
            "http://h/file/download?access_token=<redacted>&package_name=p&version=6"
        );
        assert_eq!(
            url(
                "http://h/oauth/token?client_id=c&client_secret=s&grant_type=password&username=u&password=p"
            ),
            "http://h/oauth/token?client_id=c&client_secret=<redacted>&grant_type=password&username=u&password=<redacted>"
        );
        assert_eq!(url("http://h/x.patch"), "http://h/x.patch");
        assert_eq!(
            url("http://h/?refresh_token=r#f"),
            "http://h/?refresh_token=<redacted>#f"
        );
    }

    #[test]
    fn masks_echoed_tokens() {
        let secrets = vec!["10bb2da8".to_owned(), String::new()];
        assert_eq!(
            text("Invalid access token: 10bb2da8", &secrets),
            "Invalid access token: <redacted>"
        );
    }
}

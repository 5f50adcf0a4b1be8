//! The contract's JSON answers and the checks every answer passes before the agent acts on it.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The longest update id the agent takes, in bytes: the state records every id of an update
/// and saves it at every checkpoint, and the log names it on every progress line.
pub const MAX_ID_LEN: usize = 256;
/// The longest patch URL the agent takes, in bytes, for the same reason.
pub const MAX_URL_LEN: usize = 4096;

/// What `/file/download` said, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckAnswer {
    /// The chain of patches, in the order they apply.
    Patches(Vec<OfferedPatch>),
    /// `100`/`101` with an empty `data`.
    UpToDate,
    /// `102`: the server knows no version for what the robot has.
    NoSuchVersion,
    /// `103`: this robot may not upgrade.
    NotAllowed,
    /// `104`: no version for this language.
    NoLanguage,
    /// `500` or a code the contract does not name.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedPatch {
    pub id: String,
    pub url: String,
}

#[derive(Deserialize)]
struct CheckBody {
    code: Value,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    id: Option<Value>,
}

#[derive(Deserialize)]
struct CallbackBody {
    code: Value,
}

/// A token answer of `/oauth/token`.
#[derive(Debug, Deserialize)]
pub struct TokenBody {
    pub access_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Seconds; a number, or a string of digits as some servers' JSON writers send it.
    #[serde(default, deserialize_with = "number_or_digits")]
    pub expires_in: Option<u64>,
}

fn number_or_digits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a count of seconds"))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a count of seconds"))),
        Some(other) => Err(serde::de::Error::custom(format!(
            "{other} is not a count of seconds"
        ))),
    }
}

/// Parses JSON the way the server's own stack (Spring with Jackson) reads and writes it: a
/// UTF-8 byte-order mark is skipped, and a key given twice takes its last value.
fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let text = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    // A map keeps the last value of a key; the derived struct would refuse the duplicate.
    let value: Value = serde_json::from_slice(text).map_err(|e| describe(&e, text))?;
    T::deserialize(value).map_err(|e| format!("malformed JSON: {e}"))
}

/// The items of a `;`-separated list as Java's `String.split(";")` gives them: trailing empty
/// items are dropped (an empty one elsewhere stays, and is refused by the caller).
fn split_list(list: &str) -> Vec<&str> {
    let mut items: Vec<&str> = list.split(';').map(str::trim).collect();
    // Java's one exception: a text without a separator is one item, even an empty one.
    if items.len() > 1 {
        while items.last().is_some_and(|i| i.is_empty()) {
            items.pop();
        }
    }
    items
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// The contract's codes arrive as strings; a tolerant client also takes numbers.
fn code_of(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.trim().to_owned()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("`code` is {other}, not a string or a number")),
    }
}

fn describe(e: &serde_json::Error, body: &[u8]) -> String {
    let start = String::from_utf8_lossy(&body[..body.len().min(40)])
        .trim()
        .to_owned();
    if start.starts_with('<') {
        format!("expected JSON, got what looks like HTML ({start:?}…)")
    } else {
        format!("malformed JSON: {e}")
    }
}

/// Parses and validates a `/file/download` answer (rules 1 and 2 of the contract).
pub fn parse_check(body: &[u8]) -> Result<CheckAnswer, String> {
    let parsed: CheckBody = from_json(body)?;
    let code = code_of(&parsed.code)?;
    match code.as_str() {
        "100" | "101" => {}
        "102" => return Ok(CheckAnswer::NoSuchVersion),
        "103" => return Ok(CheckAnswer::NotAllowed),
        "104" => return Ok(CheckAnswer::NoLanguage),
        _ => return Ok(CheckAnswer::Failed(code)),
    }
    let data = parsed.data.unwrap_or_default();
    let ids = match parsed.id {
        None | Some(Value::Null) => String::new(),
        Some(v) => code_of(&v).map_err(|_| "`id` is not a string".to_owned())?,
    };
    if data.trim().is_empty() && ids.trim().is_empty() {
        return Ok(CheckAnswer::UpToDate);
    }
    let urls = split_list(&data);
    let ids = split_list(&ids);
    if urls.is_empty() && ids.is_empty() {
        // `";"`: Java's `split` leaves no item at all, so the original client saw no patch.
        return Ok(CheckAnswer::UpToDate);
    }
    if urls.len() != ids.len() {
        return Err(format!(
            "`data` lists {} patch URLs but `id` lists {} ids",
            urls.len(),
            ids.len()
        ));
    }
    let mut patches = Vec::with_capacity(urls.len());
    for (i, (url, id)) in urls.iter().zip(&ids).enumerate() {
        if id.is_empty() {
            return Err(format!("update id number {} is empty", i + 1));
        }
        if id.len() > MAX_ID_LEN {
            return Err(format!(
                "update id number {} is {} bytes long, more than the {MAX_ID_LEN} the agent takes",
                i + 1,
                id.len()
            ));
        }
        if url.len() > MAX_URL_LEN {
            return Err(format!(
                "patch URL number {} is {} bytes long, more than the {MAX_URL_LEN} the agent takes",
                i + 1,
                url.len()
            ));
        }
        if id.chars().any(char::is_control) {
            return Err(format!(
                "update id number {} ({}) holds control characters",
                i + 1,
                crate::redact::printable(id)
            ));
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            format!(
                "patch URL {} (id {id}) is not a URL: {e}",
                crate::redact::url(url)
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host_str().is_none_or(str::is_empty)
        {
            return Err(format!(
                "patch URL {} (id {id}) is not an http or https URL",
                crate::redact::url(url)
            ));
        }
        if patches.iter().any(|p: &OfferedPatch| p.id == *id) {
            return Err(format!("update id {id} is listed twice"));
        }
        // The parser's own spelling from here on (`HTTP://h`, `http:h` and `http://h` are one
        // URL): every rule after this one reads the same scheme, host and port the download uses.
        patches.push(OfferedPatch {
            id: (*id).to_owned(),
            url: parsed.to_string(),
        });
    }
    Ok(CheckAnswer::Patches(patches))
}

/// The `code` of a `/file/callback` answer.
pub fn parse_callback(body: &[u8]) -> Result<String, String> {
    let parsed: CallbackBody = from_json(body)?;
    code_of(&parsed.code)
}

/// Parses and checks a token answer.
pub fn parse_token(body: &[u8]) -> Result<TokenBody, String> {
    let token: TokenBody = from_json(body)?;
    if token.access_token.trim().is_empty() {
        return Err("`access_token` is empty".into());
    }
    if let Some(kind) = &token.token_type {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(format!("token type {kind:?} is not bearer"));
        }
    }
    Ok(token)
}

/// `{"error": …, "error_description": …}`, as Spring Security OAuth2 answers.
pub(super) fn parse_oauth_error(body: &[u8]) -> Option<(String, Option<String>)> {
    let e: OAuthErrorBody = from_json(body).ok()?;
    Some((e.error, e.error_description))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patches(body: &str) -> Vec<OfferedPatch> {
        match parse_check(body.as_bytes()) {
            Ok(CheckAnswer::Patches(p)) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn contract_example() {
        let p = patches(
            r#"{"code": "100", "data": "http://10.10.1.14:8080/version/2s/2s/Alpha2Services-1.1.1.32--17--5mic.patch;http://10.10.1.14:8080/version/2s/2s/Alpha2Services-1.1.2.32--18--5mic.patch", "id": "23;25"}"#,
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].id, "23");
        assert!(p[1].url.ends_with("--18--5mic.patch"));
    }

    #[test]
    fn codes_as_strings_or_numbers() {
        assert_eq!(
            parse_check(br#"{"code":100,"data":"","id":""}"#),
            Ok(CheckAnswer::UpToDate)
        );
        assert_eq!(
            parse_check(br#"{"code":"101","data":null}"#),
            Ok(CheckAnswer::UpToDate)
        );
        assert_eq!(
            parse_check(br#"{"code":"102"}"#),
            Ok(CheckAnswer::NoSuchVersion)
        );
        assert_eq!(parse_check(br#"{"code":103}"#), Ok(CheckAnswer::NotAllowed));
        assert_eq!(
            parse_check(br#"{"code":"104","data":""}"#),
            Ok(CheckAnswer::NoLanguage)
        );
        assert_eq!(
            parse_check(br#"{"code":"500"}"#),
            Ok(CheckAnswer::Failed("500".into()))
        );
        let single = patches(r#"{"code":"100","data":"https://h/a--17--f.patch","id":23}"#);
        assert_eq!(single[0].id, "23");
    }

    #[test]
    fn rejects_bad_answers() {
        let bad = [
            (
                r#"{"code":"100","data":"http://h/a.patch;http://h/b.patch","id":"23"}"#,
                "lists 2 patch URLs but `id` lists 1",
            ),
            (
                r#"{"code":"100","data":"http://h/a.patch","id":""}"#,
                "lists 1 patch URLs but `id` lists 1",
            ),
            (
                r#"{"code":"100","data":"ftp://h/a.patch","id":"1"}"#,
                "not an http or https URL",
            ),
            (
                r#"{"code":"100","data":"/a.patch","id":"1"}"#,
                "is not a URL",
            ),
            (
                r#"{"code":"100","data":"http://xn--/a.patch","id":"1"}"#,
                "invalid international domain name",
            ),
            (
                r#"{"code":"100","data":"http://h/a;http://h/b","id":"1;1"}"#,
                "listed twice",
            ),
            (
                "<html><body>502 Bad Gateway</body></html>",
                "looks like HTML",
            ),
            (r#"{"code":"100","data":"#, "malformed JSON"),
            (r#"{"code":[1]}"#, "not a string or a number"),
        ];
        for (body, expected) in bad {
            let err = parse_check(body.as_bytes()).expect_err(body);
            // The second case has equal lengths but an empty id.
            let expected = if expected.starts_with("lists 1") {
                "is empty"
            } else {
                expected
            };
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn patch_urls_are_kept_as_the_parser_spells_them() {
        // The rules after the wire (plain http from an https server, allowed hosts) read the
        // scheme and host of this one spelling: `HTTP://` and `http:host` are plain http too.
        for (sent, kept) in [
            (
                "HTTP://127.0.0.1:8/v/a--17--f.patch",
                "http://127.0.0.1:8/v/a--17--f.patch",
            ),
            (
                "http:127.0.0.1:8/v/a--17--f.patch",
                "http://127.0.0.1:8/v/a--17--f.patch",
            ),
            (
                "hTTpS://Host.Example/v/a--17--f.patch",
                "https://host.example/v/a--17--f.patch",
            ),
            (
                "http://[::1]:8/v/a--17--f.patch",
                "http://[::1]:8/v/a--17--f.patch",
            ),
            (
                "http://%68ost/v/a--17--f.patch",
                "http://host/v/a--17--f.patch",
            ),
        ] {
            let body = format!(r#"{{"code":"100","data":"{sent}","id":"23"}}"#);
            match parse_check(body.as_bytes()) {
                Ok(CheckAnswer::Patches(p)) => assert_eq!(p[0].url, kept, "{sent}"),
                other => panic!("{sent}: {other:?}"),
            }
            assert!(super::super::is_plain_http(kept) != kept.starts_with("https"));
        }
    }

    #[test]
    fn separators_alone_are_no_patches_as_java_reads_them() {
        for body in [
            r#"{"code":"100","data":";","id":";"}"#,
            r#"{"code":"100","data":" ; ;","id":";;"}"#,
        ] {
            assert!(
                matches!(parse_check(body.as_bytes()), Ok(CheckAnswer::UpToDate)),
                "{body}"
            );
        }
        assert!(parse_check(br#"{"code":"100","data":";","id":"23"}"#).is_err());
    }

    #[test]
    fn answers_as_spring_and_jackson_send_them() {
        // A byte-order mark, a key given twice (the last one counts), trailing separators
        // (Java's split drops trailing empty items), and expires_in as a string.
        let p = patches(
            "\u{feff}{\"code\":\"500\",\"code\":\"100\",\"data\":\"http://h/a--17--f.patch;http://h/b--18--f.patch;\",\"id\":\"23;25;\"}",
        );
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].id.as_str(), p[1].id.as_str()), ("23", "25"));
        let t = parse_token(br#"{"access_token":"a","expires_in":"11999","expires_in":"600"}"#)
            .unwrap();
        assert_eq!(t.expires_in, Some(600));
        assert_eq!(
            parse_callback("\u{feff}{\"code\":\"100\"}".as_bytes()),
            Ok("100".into())
        );
        // An empty item elsewhere still refuses the answer.
        let err = parse_check(
            br#"{"code":"100","data":"http://h/a.patch;;http://h/b.patch","id":"1;;2"}"#,
        )
        .unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        assert!(parse_token(br#"{"access_token":"a","expires_in":"soon"}"#).is_err());
    }

    #[test]
    fn ids_and_urls_longer_than_their_caps_refuse_the_answer() {
        let long_id = "7".repeat(MAX_ID_LEN + 1);
        let body = format!(r#"{{"code":"100","data":"http://h/a--17--f.patch","id":"{long_id}"}}"#);
        let err = parse_check(body.as_bytes()).unwrap_err();
        assert!(err.contains("more than the 256"), "{err}");
        let long_url = format!("http://h/{}--17--f.patch", "a".repeat(MAX_URL_LEN));
        let body = format!(r#"{{"code":"100","data":"{long_url}","id":"23"}}"#);
        let err = parse_check(body.as_bytes()).unwrap_err();
        assert!(err.contains("more than the 4096"), "{err}");
        let at_cap = "7".repeat(MAX_ID_LEN);
        let body = format!(r#"{{"code":"100","data":"http://h/a--17--f.patch","id":"{at_cap}"}}"#);
        assert_eq!(patches(&body)[0].id, at_cap);
    }

    #[test]
    fn token_and_errors() {
        let t = parse_token(br#"{"access_token":"10bb","token_type":"bearer","refresh_token":"8acf","expires_in":11999,"scope":"read write trust"}"#).unwrap();
        assert_eq!(t.expires_in, Some(11999));
        assert!(parse_token(br#"{"access_token":"x","token_type":"mac"}"#).is_err());
        assert_eq!(
            parse_oauth_error(
                br#"{"error":"invalid_token","error_description":"Invalid access token: x"}"#
            ),
            Some((
                "invalid_token".into(),
                Some("Invalid access token: x".into())
            ))
        );
        assert_eq!(
            parse_callback(br#"{"code":"100","data":"regisiter information"}"#),
            Ok("100".into())
        );
    }
}

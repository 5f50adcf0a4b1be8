//! The contract's JSON answers and the checks every answer passes before the agent acts on it.

use serde::Deserialize;
use serde_json::Value;

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
    #[serde(default)]
    pub expires_in: Option<u64>,
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
    let parsed: CheckBody = serde_json::from_slice(body).map_err(|e| describe(&e, body))?;
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
    let urls: Vec<&str> = data.split(';').map(str::trim).collect();
    let ids: Vec<&str> = ids.split(';').map(str::trim).collect();
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
        patches.push(OfferedPatch {
            id: (*id).to_owned(),
            url: (*url).to_owned(),
        });
    }
    Ok(CheckAnswer::Patches(patches))
}

/// The `code` of a `/file/callback` answer.
pub fn parse_callback(body: &[u8]) -> Result<String, String> {
    let parsed: CallbackBody = serde_json::from_slice(body).map_err(|e| describe(&e, body))?;
    code_of(&parsed.code)
}

/// Parses and checks a token answer.
pub fn parse_token(body: &[u8]) -> Result<TokenBody, String> {
    let token: TokenBody = serde_json::from_slice(body).map_err(|e| describe(&e, body))?;
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
    let e: OAuthErrorBody = serde_json::from_slice(body).ok()?;
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

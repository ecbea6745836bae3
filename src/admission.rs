//! Who may connect: the upgrade request's query string and token, judged before any upgrade.
//!
//! Owns the mapping from a request to an [`Identity`] or a [`Rejection`] with OpenIM's HTTP
//! status and errCode. Pure: the caller supplies the key and the time; it must not touch sockets,
//! the registry or metrics.

use crate::policy::Platform;
use crate::protocol::codes;
use crate::token::TokenKey;

/// An authenticated client, as the upgrade request and its token describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sendID`, equal to the token's `UserID`.
    pub user: String,
    /// `platformID`, equal to the token's `PlatformID`.
    pub platform: Platform,
    /// `isBackground=true` on the URL.
    pub background: bool,
    /// `isMsgResp=true`: report the outcome in a first text frame instead of the HTTP status.
    pub msg_resp: bool,
    /// `operationID`, echoed in logs.
    pub operation_id: String,
}

/// A refused upgrade: the HTTP status and OpenIM's `{"errCode","errMsg","errDlt"}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status for a refusal before the upgrade (400, 401 or 503).
    pub status: u16,
    /// OpenIM errCode.
    pub code: i32,
    /// Human-readable reason.
    pub msg: String,
    /// The client asked for `isMsgResp=true`: upgrade, send the body as a text frame, close 1008.
    pub msg_resp: bool,
}

impl Rejection {
    pub(crate) fn new(status: u16, code: i32, msg: impl Into<String>) -> Rejection {
        Rejection { status, code, msg: msg.into(), msg_resp: false }
    }

    /// The JSON body OpenIM sends: `{"errCode":..,"errMsg":..,"errDlt":""}`.
    pub fn body(&self) -> String {
        crate::protocol::status_json(self.code, &self.msg)
    }

    /// A short label for metrics and logs (`args`, `token_expired`, ...).
    pub fn reason(&self) -> &'static str {
        match self.code {
            codes::CONN_ARGS => "args",
            codes::TOKEN_EXPIRED => "token_expired",
            codes::TOKEN_INVALID => "token_invalid",
            codes::TOKEN_MALFORMED => "token_malformed",
            codes::CONN_OVER_MAX => "over_capacity",
            _ => "other",
        }
    }
}

/// Judges an upgrade request's query string (`None` when the URL has none) at time `now`.
pub fn admit(query: Option<&str>, key: &TokenKey, now: u64) -> Result<Identity, Rejection> {
    judge(query, Some((key, now)))
}

/// Judges an upgrade request without a token (`Config::require_token` false): `sendID` and
/// `platformID` are optional (an empty user is named by the gateway; the platform defaults to
/// Web), but a `platformID` that is present must still be a platform.
pub fn admit_open(query: Option<&str>) -> Result<Identity, Rejection> {
    judge(query, None)
}

fn judge(query: Option<&str>, verify: Option<(&TokenKey, u64)>) -> Result<Identity, Rejection> {
    let mut token = None;
    let mut user = None;
    let mut platform = None;
    let mut operation_id = String::new();
    let (mut background, mut msg_resp) = (false, false);
    let args_err = |msg: String, msg_resp| Rejection { msg_resp, ..Rejection::new(400, codes::CONN_ARGS, msg) };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| args_err(format!("{k}: bad percent-encoding"), false))?;
        match k {
            "token" => token = Some(v),
            "sendID" => user = Some(v),
            "platformID" => platform = Some(v),
            "operationID" => operation_id = v,
            "isBackground" => background = v == "true",
            "isMsgResp" => msg_resp = v == "true",
            _ => {}
        }
    }
    let Some((key, now)) = verify else {
        let platform = match platform.as_deref().filter(|p| !p.is_empty()) {
            None => Platform::Web,
            Some(p) => p
                .parse::<i64>()
                .ok()
                .and_then(Platform::from_id)
                .ok_or_else(|| args_err(format!("platformID {p:?} is not a platform (1..=11)"), msg_resp))?,
        };
        return Ok(Identity { user: user.unwrap_or_default(), platform, background, msg_resp, operation_id });
    };
    let missing: Vec<&str> = [("token", &token), ("sendID", &user), ("platformID", &platform)]
        .into_iter()
        .filter(|(_, v)| v.as_deref().is_none_or(str::is_empty))
        .map(|(k, _)| k)
        .collect();
    if !missing.is_empty() {
        return Err(args_err(format!("missing {}", missing.join(", ")), msg_resp));
    }
    let (token, user, platform) = (token.unwrap_or_default(), user.unwrap_or_default(), platform.unwrap_or_default());
    let platform = platform
        .parse::<i64>()
        .ok()
        .and_then(Platform::from_id)
        .ok_or_else(|| args_err(format!("platformID {platform:?} is not a platform (1..=11)"), msg_resp))?;
    let reject_token = |code: i32, msg: String| Rejection { msg_resp, ..Rejection::new(401, code, msg) };
    let claims = key.verify(&token, now).map_err(|e| reject_token(e.err_code(), e.to_string()))?;
    if claims.user_id != user || claims.platform_id != i64::from(platform.id()) {
        return Err(reject_token(
            codes::TOKEN_INVALID,
            format!(
                "token is for user {:?} on platform {}, not sendID {user:?} on platformID {}",
                claims.user_id,
                claims.platform_id,
                platform.id()
            ),
        ));
    }
    Ok(Identity { user, platform, background, msg_resp, operation_id })
}

/// Decodes `%XX` escapes and `+`; `None` for a broken escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_owned());
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn key() -> TokenKey {
        TokenKey::new(b"k")
    }

    fn query(token: &str, user: &str, platform: &str) -> String {
        format!("token={token}&sendID={user}&platformID={platform}&operationID=op1")
    }

    #[test]
    fn valid_request_is_admitted() {
        let t = key().mint("u1", 5, NOW + 10);
        let q = query(&t, "u1", "5") + "&isBackground=true";
        let id = admit(Some(&q), &key(), NOW).unwrap();
        assert_eq!(id.user, "u1");
        assert_eq!(id.platform, Platform::Web);
        assert!(id.background && !id.msg_resp);
        assert_eq!(id.operation_id, "op1");
    }

    #[test]
    fn missing_arguments_are_400_1602_and_named() {
        for (q, missing) in [
            (None, "missing token, sendID, platformID"),
            (Some("sendID=u1&platformID=1"), "missing token"),
            (Some("token=x&platformID=1"), "missing sendID"),
            (Some("token=x&sendID=u1&platformID="), "missing platformID"),
        ] {
            let r = admit(q, &key(), NOW).unwrap_err();
            assert_eq!((r.status, r.code), (400, 1602), "{q:?}");
            assert_eq!(r.msg, missing);
        }
    }

    #[test]
    fn bad_platform_is_400_1602() {
        let t = key().mint("u1", 1, NOW + 10);
        for p in ["0", "12", "web", "-1"] {
            let r = admit(Some(&query(&t, "u1", p)), &key(), NOW).unwrap_err();
            assert_eq!((r.status, r.code), (400, 1602), "{p}");
        }
    }

    #[test]
    fn token_failures_are_401_with_openim_codes() {
        let expired = key().mint("u1", 1, NOW - 1);
        let other_key = TokenKey::new(b"other").mint("u1", 1, NOW + 10);
        let other_user = key().mint("u2", 1, NOW + 10);
        let other_platform = key().mint("u1", 2, NOW + 10);
        for (t, code) in
            [(expired.as_str(), 1501), (&other_key, 1502), (&other_user, 1502), (&other_platform, 1502), ("junk", 1503)]
        {
            let r = admit(Some(&query(t, "u1", "1")), &key(), NOW).unwrap_err();
            assert_eq!((r.status, r.code), (401, code), "{t}: {}", r.msg);
        }
    }

    #[test]
    fn is_msg_resp_is_carried_into_the_rejection() {
        let q = "sendID=u1&platformID=1&isMsgResp=true";
        let r = admit(Some(q), &key(), NOW).unwrap_err();
        assert!(r.msg_resp);
        assert_eq!(r.body(), r#"{"errCode":1602,"errMsg":"missing token","errDlt":""}"#);
    }

    #[test]
    fn percent_encoded_user_ids_decode() {
        let t = key().mint("a b/ü", 1, NOW + 10);
        let q = query(&t, "a%20b%2F%C3%BC", "1");
        assert_eq!(admit(Some(&q), &key(), NOW).unwrap().user, "a b/ü");
        let r = admit(Some("token=%zz&sendID=u&platformID=1"), &key(), NOW).unwrap_err();
        assert_eq!(r.code, 1602);
    }
}

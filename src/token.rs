//! HS256 JSON Web Tokens with OpenIM's claims (`UserID`, `PlatformID`, `exp`).
//!
//! Owns minting and verification and the mapping of every failure to OpenIM's token codes
//! (1501 expired, 1502 invalid, 1503 malformed). Pure: the caller passes the current time; it
//! must not read clocks, sockets or configuration.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The claims msggate reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user the token was issued to (`UserID`).
    #[serde(rename = "UserID")]
    pub user_id: String,
    /// The platform the token was issued for (`PlatformID`).
    #[serde(rename = "PlatformID")]
    pub platform_id: i64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused; [`TokenError::err_code`] gives OpenIM's number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Well-formed and correctly signed, but past its `exp` (1501).
    #[error("token expired")]
    Expired,
    /// Well-formed but not acceptable: bad signature, wrong algorithm, or claims that do not
    /// match the connection (1502).
    #[error("token invalid: {0}")]
    Invalid(&'static str),
    /// Not a JWT at all: wrong shape, bad base64 or JSON, missing claims (1503).
    #[error("token malformed: {0}")]
    Malformed(&'static str),
}

impl TokenError {
    /// OpenIM's error code for this failure.
    pub fn err_code(&self) -> i32 {
        match self {
            TokenError::Expired => 1501,
            TokenError::Invalid(_) => 1502,
            TokenError::Malformed(_) => 1503,
        }
    }
}

/// A signing and verification key (the shared secret).
#[derive(Clone)]
pub struct TokenKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

#[derive(Deserialize)]
struct Header<'a> {
    alg: &'a str,
}

const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"; // {"alg":"HS256","typ":"JWT"}

impl TokenKey {
    /// A key for `secret`.
    pub fn new(secret: &[u8]) -> TokenKey {
        TokenKey { mac: Hmac::new_from_slice(secret).expect("HMAC takes keys of any length") }
    }

    /// Mints a token for `user` on `platform`, valid until `exp` (Unix seconds).
    pub fn mint(&self, user: &str, platform: i64, exp: u64) -> String {
        let claims = Claims { user_id: user.to_owned(), platform_id: platform, exp };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let signing_input = format!("{HEADER_B64}.{payload}");
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    /// Verifies `token` at time `now` (Unix seconds) and returns its claims.
    ///
    /// The signature is checked before the claims are trusted, and in constant time.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let malformed = || TokenError::Malformed("expected three dot-separated parts");
        let (signing_input, sig) = token.rsplit_once('.').ok_or_else(malformed)?;
        let (header, payload) = signing_input.split_once('.').ok_or_else(malformed)?;
        if payload.contains('.') {
            return Err(malformed());
        }
        let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::Malformed("header is not base64url"))?;
        let header: Header<'_> = serde_json::from_slice(&header)
            .map_err(|_| TokenError::Malformed("header is not a JSON object with alg"))?;
        if header.alg != "HS256" {
            return Err(TokenError::Invalid("algorithm is not HS256"));
        }
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&sig).map_err(|_| TokenError::Invalid("signature does not match"))?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|_| TokenError::Malformed("payload lacks UserID, PlatformID or exp"))?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn mint_then_verify_round_trips() {
        let key = TokenKey::new(b"secret");
        let token = key.mint("u1", 5, NOW + 60);
        let claims = key.verify(&token, NOW).unwrap();
        assert_eq!(claims, Claims { user_id: "u1".into(), platform_id: 5, exp: NOW + 60 });
    }

    #[test]
    fn expired_token_is_1501() {
        let key = TokenKey::new(b"secret");
        let err = key.verify(&key.mint("u1", 1, NOW), NOW).unwrap_err();
        assert_eq!((err.clone(), err.err_code()), (TokenError::Expired, 1501));
    }

    #[test]
    fn wrong_secret_is_1502() {
        let token = TokenKey::new(b"other").mint("u1", 1, NOW + 60);
        let err = TokenKey::new(b"secret").verify(&token, NOW).unwrap_err();
        assert_eq!(err.err_code(), 1502, "{err}");
    }

    #[test]
    fn tampered_payload_is_1502() {
        let key = TokenKey::new(b"secret");
        let token = key.mint("u1", 1, NOW + 60);
        let forged = URL_SAFE_NO_PAD.encode(br#"{"UserID":"admin","PlatformID":1,"exp":9999999999}"#);
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &forged;
        assert_eq!(key.verify(&parts.join("."), NOW).unwrap_err().err_code(), 1502);
    }

    #[test]
    fn alg_none_is_refused() {
        let key = TokenKey::new(b"secret");
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"UserID":"u1","PlatformID":1,"exp":9999999999}"#);
        let err = key.verify(&format!("{header}.{payload}."), NOW).unwrap_err();
        assert_eq!(err.err_code(), 1502, "{err}");
    }

    #[test]
    fn garbage_is_1503() {
        let key = TokenKey::new(b"secret");
        for bad in ["", "abc", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.", "..."] {
            let err = key.verify(bad, NOW).unwrap_err();
            assert_eq!(err.err_code(), 1503, "{bad:?}: {err}");
        }
    }

    #[test]
    fn missing_claims_is_1503() {
        let key = TokenKey::new(b"secret");
        let payload = URL_SAFE_NO_PAD.encode(br#"{"UserID":"u1"}"#);
        let input = format!("{HEADER_B64}.{payload}");
        let mut mac = key.mac.clone();
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
        assert_eq!(key.verify(&token, NOW).unwrap_err().err_code(), 1503);
    }

    #[test]
    fn header_constant_is_the_json_it_claims() {
        assert_eq!(URL_SAFE_NO_PAD.decode(HEADER_B64).unwrap(), br#"{"alg":"HS256","typ":"JWT"}"#);
    }
}

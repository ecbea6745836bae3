//! The wire protocol: OpenIM's JSON envelope, its request identifiers and error codes.
//!
//! Owns decoding client frames and encoding server frames, byte for byte. Pure: no sockets, no
//! registry, no clocks. `docs/PROTOCOL.md` documents what is encoded here; keep them together.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// OpenIM error codes the gateway sends (`errCode`).
pub mod codes {
    /// Success.
    pub const OK: i32 = 0;
    /// A request's JSON or fields are malformed, or its `reqIdentifier` is unknown.
    pub const ARGS: i32 = 1001;
    /// The request's `sendID` is not the session's user.
    pub const NO_PERMISSION: i32 = 1002;
    /// Token past its `exp`.
    pub const TOKEN_EXPIRED: i32 = 1501;
    /// Token signature, algorithm or claims wrong.
    pub const TOKEN_INVALID: i32 = 1502;
    /// Token is not a JWT.
    pub const TOKEN_MALFORMED: i32 = 1503;
    /// The gateway holds its maximum of connections, or could not hand the socket to a reactor.
    pub const CONN_OVER_MAX: i32 = 1601;
    /// Missing or invalid upgrade arguments (`token`, `sendID`, `platformID`).
    pub const CONN_ARGS: i32 = 1602;
    /// The request is understood but not served by this gateway (seq sync needs storage).
    pub const NOT_SUPPORTED: i32 = 1610;
    /// The embedding service's handler failed (it panicked) while serving the request.
    pub const SERVER_INTERNAL: i32 = 500;
    /// The handler's worker queue was full: the request was not taken; try again later.
    pub const SERVER_BUSY: i32 = 503;
}

/// Request identifiers (`reqIdentifier`).
pub mod ident {
    /// Newest seq (seq sync): answered with [`super::codes::NOT_SUPPORTED`].
    pub const GET_NEWEST_SEQ: i32 = 1001;
    /// Pull by seq (seq sync): answered with [`super::codes::NOT_SUPPORTED`].
    pub const PULL_MSG_BY_SEQ: i32 = 1002;
    /// Send a message.
    pub const SEND_MSG: i32 = 1003;
    /// Server push of new messages.
    pub const PUSH_MSG: i32 = 2001;
    /// Server notice that this session was kicked by a newer login.
    pub const KICK_ONLINE: i32 = 2002;
    /// Client logout: acked, then closed with 1000.
    pub const LOGOUT: i32 = 2003;
    /// Set the session's background flag.
    pub const SET_BACKGROUND: i32 = 2004;
    /// Subscribe to (or unsubscribe from) users' online status; also the server's push when a
    /// watched user's online platforms change.
    pub const SUB_USER_ONLINE_STATUS: i32 = 2005;
}

/// A client request envelope. Strings borrow from the frame when they have no escapes.
#[derive(Debug, Deserialize)]
pub struct Request<'a> {
    /// `reqIdentifier`.
    #[serde(rename = "reqIdentifier")]
    pub req_identifier: Option<i32>,
    /// `sendID`.
    #[serde(rename = "sendID", borrow, default)]
    pub send_id: Cow<'a, str>,
    /// `operationID`, echoed in the response.
    #[serde(rename = "operationID", borrow, default)]
    pub operation_id: Cow<'a, str>,
    /// `msgIncr`, echoed in the response.
    #[serde(rename = "msgIncr", borrow, default)]
    pub msg_incr: Cow<'a, str>,
    /// `data`, decoded per identifier.
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
    /// `type`: `"ping"` makes this a text heartbeat.
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Cow<'a, str>>,
}

/// A decoded client frame.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// `{"type":"ping"}`: answer [`PONG`].
    Ping,
    /// A request envelope with an identifier.
    Request(Request<'a>),
}

/// The answer to a text heartbeat.
pub const PONG: &str = r#"{"type":"pong"}"#;

/// Why a frame could not be decoded; the session answers with [`codes::ARGS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Decodes one client frame.
pub fn decode(text: &str) -> Result<Inbound<'_>, DecodeError> {
    let req: Request<'_> = serde_json::from_str(text).map_err(|e| DecodeError(format!("malformed request: {e}")))?;
    if req.kind.as_deref() == Some("ping") {
        return Ok(Inbound::Ping);
    }
    Ok(Inbound::Request(req)) // a missing reqIdentifier is the dispatcher's error to answer
}

/// `data` of a 1003 send.
#[derive(Debug, Deserialize)]
pub struct SendMsg<'a> {
    /// The recipient user.
    #[serde(rename = "recvID", borrow)]
    pub recv_id: Cow<'a, str>,
    /// The client's own id for the message, echoed in the push and the ack.
    #[serde(rename = "clientMsgID", borrow, default)]
    pub client_msg_id: Cow<'a, str>,
    /// Content type, passed through.
    #[serde(rename = "contentType", default)]
    pub content_type: i64,
    /// Content, any JSON value, passed through untouched.
    #[serde(borrow)]
    pub content: &'a RawValue,
}

/// `data` of a 2004 background toggle.
#[derive(Debug, Deserialize)]
pub struct SetBackground {
    /// The new background state.
    #[serde(rename = "isBackground")]
    pub is_background: bool,
}

/// `data` of a 2005 subscription request. Either list may be absent, not both.
#[derive(Debug, Deserialize)]
pub struct SubUserOnlineStatus {
    /// Users to start watching (OpenIM's protobuf spells it `subscribeUserID`, accepted too).
    #[serde(rename = "subscribeUserIDs", alias = "subscribeUserID", default)]
    pub subscribe_user_ids: Option<Vec<String>>,
    /// Users to stop watching.
    #[serde(rename = "unsubscribeUserIDs", alias = "unsubscribeUserID", default)]
    pub unsubscribe_user_ids: Option<Vec<String>>,
}

/// One user's online platforms, in a 2005 answer or push (OpenIM's `SubUserOnlineStatusElem`).
#[derive(Debug, Serialize)]
pub struct UserOnlineStatus<'a> {
    /// The watched user.
    #[serde(rename = "userID")]
    pub user_id: &'a str,
    /// Platform ids the user is online on, ascending, each once; empty: offline.
    #[serde(rename = "onlinePlatformIDs")]
    pub online_platform_ids: Vec<u8>,
}

/// `data` of a 2005 answer or push (OpenIM's `SubUserOnlineStatusTips`).
#[derive(Debug, Serialize)]
pub struct SubUserOnlineStatusTips<'a> {
    /// One element per user.
    pub subscribers: Vec<UserOnlineStatus<'a>>,
}

/// The 2005 push telling a subscriber `user`'s online platforms after a change.
pub fn presence_frame(user: &str, online_platform_ids: Vec<u8>) -> String {
    let resp = Response {
        req_identifier: ident::SUB_USER_ONLINE_STATUS,
        msg_incr: "",
        operation_id: "",
        err_code: codes::OK,
        err_msg: "",
        data: SubUserOnlineStatusTips { subscribers: vec![UserOnlineStatus { user_id: user, online_platform_ids }] },
    };
    serde_json::to_string(&resp).expect("presence push serializes")
}

/// Decodes `data` as `T`, with an error that names the identifier.
pub fn data<'a, T: Deserialize<'a>>(req: &Request<'a>, what: &str) -> Result<T, DecodeError> {
    let raw = req.data.ok_or_else(|| DecodeError(format!("{what}: missing data")))?;
    serde_json::from_str(raw.get()).map_err(|e| DecodeError(format!("{what}: bad data: {e}")))
}

#[derive(Serialize)]
struct Response<'a, T> {
    #[serde(rename = "reqIdentifier")]
    req_identifier: i32,
    #[serde(rename = "msgIncr")]
    msg_incr: &'a str,
    #[serde(rename = "operationID")]
    operation_id: &'a str,
    #[serde(rename = "errCode")]
    err_code: i32,
    #[serde(rename = "errMsg")]
    err_msg: &'a str,
    data: T,
}

/// Encodes a response envelope answering `req` (or identifier 0 when the frame had none).
pub fn response<T: Serialize>(req: Option<&Request<'_>>, err_code: i32, err_msg: &str, data: T) -> String {
    let ident = req.and_then(|r| r.req_identifier).unwrap_or(0);
    envelope(ident, req.map_or("", |r| &r.msg_incr), req.map_or("", |r| &r.operation_id), err_code, err_msg, data)
}

/// Encodes a response envelope from its parts (for answers built away from the frame).
pub fn envelope<T: Serialize>(
    req_identifier: i32,
    msg_incr: &str,
    operation_id: &str,
    err_code: i32,
    err_msg: &str,
    data: T,
) -> String {
    let resp = Response { req_identifier, msg_incr, operation_id, err_code, err_msg, data };
    serde_json::to_string(&resp).expect("response serializes")
}

/// An error response to `req`, with `data: null`.
pub fn error_response(req: Option<&Request<'_>>, err_code: i32, err_msg: &str) -> String {
    response(req, err_code, err_msg, ())
}

#[derive(Serialize)]
struct PushedMsg<'a> {
    #[serde(rename = "sendID")]
    send_id: &'a str,
    #[serde(rename = "recvID")]
    recv_id: &'a str,
    #[serde(rename = "serverMsgID")]
    server_msg_id: &'a str,
    #[serde(rename = "clientMsgID")]
    client_msg_id: &'a str,
    #[serde(rename = "contentType")]
    content_type: i64,
    content: &'a RawValue,
    #[serde(rename = "sendTime")]
    send_time: u64,
}

#[derive(Serialize)]
struct Msgs<'a> {
    msgs: [PushedMsg<'a>; 1],
}

/// The 2001 push frame for one message from `sender`.
pub fn push_frame(sender: &str, operation_id: &str, msg: &SendMsg<'_>, server_msg_id: &str, send_time: u64) -> String {
    let pushed = PushedMsg {
        send_id: sender,
        recv_id: &msg.recv_id,
        server_msg_id,
        client_msg_id: &msg.client_msg_id,
        content_type: msg.content_type,
        content: msg.content,
        send_time,
    };
    let resp = Response {
        req_identifier: ident::PUSH_MSG,
        msg_incr: "",
        operation_id,
        err_code: codes::OK,
        err_msg: "",
        data: Msgs { msgs: [pushed] },
    };
    serde_json::to_string(&resp).expect("push serializes")
}

/// A 2001 frame carrying `msg` (a JSON object, already encoded) untouched as `data.msgs[0]`:
/// what the admin API and [`crate::GatewayHandle::push`] send.
pub fn push_frame_raw(msg: &RawValue) -> String {
    #[derive(Serialize)]
    struct RawMsgs<'a> {
        msgs: [&'a RawValue; 1],
    }
    let resp = Response {
        req_identifier: ident::PUSH_MSG,
        msg_incr: "",
        operation_id: "",
        err_code: codes::OK,
        err_msg: "",
        data: RawMsgs { msgs: [msg] },
    };
    serde_json::to_string(&resp).expect("push serializes")
}

/// `data` of the ack to a 1003 send.
#[derive(Serialize)]
pub struct SendAck<'a> {
    /// The id the gateway assigned.
    #[serde(rename = "serverMsgID")]
    pub server_msg_id: &'a str,
    /// The client's id, echoed.
    #[serde(rename = "clientMsgID")]
    pub client_msg_id: &'a str,
    /// Milliseconds since the Unix epoch when the gateway accepted the message.
    #[serde(rename = "sendTime")]
    pub send_time: u64,
    /// The recipient's sessions the push was queued to.
    pub delivered: usize,
}

/// The 2002 frame sent to a session replaced by a newer login.
pub fn kick_frame(reason: &str) -> String {
    let resp = Response {
        req_identifier: ident::KICK_ONLINE,
        msg_incr: "",
        operation_id: "",
        err_code: codes::OK,
        err_msg: reason,
        data: (),
    };
    serde_json::to_string(&resp).expect("kick serializes")
}

/// OpenIM's handshake status object: `{"errCode":..,"errMsg":..,"errDlt":""}`.
pub fn status_json(code: i32, msg: &str) -> String {
    #[derive(Serialize)]
    struct Status<'a> {
        #[serde(rename = "errCode")]
        code: i32,
        #[serde(rename = "errMsg")]
        msg: &'a str,
        #[serde(rename = "errDlt")]
        dlt: &'a str,
    }
    serde_json::to_string(&Status { code, msg, dlt: "" }).expect("status serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn decodes_a_send_and_borrows_plain_strings() {
        let text = r#"{"reqIdentifier":1003,"sendID":"u1","operationID":"op","msgIncr":"7",
            "data":{"recvID":"u2","clientMsgID":"c1","contentType":101,"content":{"text":"hi"}}}"#;
        let Inbound::Request(req) = decode(text).unwrap() else { panic!("not a request") };
        assert_eq!(req.req_identifier, Some(1003));
        assert!(matches!(req.send_id, Cow::Borrowed("u1")));
        let msg: SendMsg<'_> = data(&req, "1003").unwrap();
        assert_eq!((msg.recv_id.as_ref(), msg.content_type, msg.content.get()), ("u2", 101, r#"{"text":"hi"}"#));
    }

    #[test]
    fn text_ping_is_recognised() {
        assert!(matches!(decode(r#"{"type":"ping"}"#), Ok(Inbound::Ping)));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in ["", "{", "[]", "null", r#"{"reqIdentifier":"x"}"#, "\u{0}"] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn send_data_errors_name_the_identifier() {
        let Inbound::Request(req) = decode(r#"{"reqIdentifier":1003,"data":{"recvID":5}}"#).unwrap() else { panic!() };
        let err = data::<SendMsg<'_>>(&req, "1003 send").unwrap_err();
        assert!(err.0.starts_with("1003 send: bad data"), "{err}");
        let Inbound::Request(req) = decode(r#"{"reqIdentifier":1003}"#).unwrap() else { panic!() };
        assert_eq!(data::<SendMsg<'_>>(&req, "1003 send").unwrap_err().0, "1003 send: missing data");
    }

    #[test]
    fn responses_echo_identifier_incr_and_operation() {
        let Inbound::Request(req) = decode(r#"{"reqIdentifier":2004,"msgIncr":"9","operationID":"o"}"#).unwrap() else {
            panic!()
        };
        let out = parse(&response(Some(&req), 0, "", json!({"a":1})));
        assert_eq!(
            out,
            json!({"reqIdentifier":2004,"msgIncr":"9","operationID":"o","errCode":0,"errMsg":"","data":{"a":1}})
        );
        let err = parse(&error_response(None, codes::ARGS, "bad"));
        assert_eq!(err["reqIdentifier"], 0);
        assert_eq!(err["data"], Value::Null);
    }

    #[test]
    fn push_frame_carries_every_field() {
        let Inbound::Request(req) = decode(
            r#"{"reqIdentifier":1003,"sendID":"u1","data":{"recvID":"u2","clientMsgID":"c","contentType":1,"content":"x\"y"}}"#,
        )
        .unwrap() else {
            panic!()
        };
        let msg: SendMsg<'_> = data(&req, "1003").unwrap();
        let out = parse(&push_frame("u1", "op", &msg, "s-1", 42));
        assert_eq!(out["reqIdentifier"], 2001);
        assert_eq!(
            out["data"]["msgs"][0],
            json!({"sendID":"u1","recvID":"u2","serverMsgID":"s-1","clientMsgID":"c","contentType":1,"content":"x\"y","sendTime":42})
        );
    }

    #[test]
    fn kick_and_status_frames() {
        let kick = parse(&kick_frame("kicked"));
        assert_eq!((kick["reqIdentifier"].as_i64(), kick["errMsg"].as_str()), (Some(2002), Some("kicked")));
        assert_eq!(status_json(0, ""), r#"{"errCode":0,"errMsg":"","errDlt":""}"#);
    }

    #[test]
    fn subscription_request_decodes_either_spelling_and_absent_lists() {
        let Inbound::Request(req) =
            decode(r#"{"reqIdentifier":2005,"data":{"subscribeUserIDs":["a","b\"c"],"x":1}}"#).unwrap()
        else {
            panic!()
        };
        let sub: SubUserOnlineStatus = data(&req, "2005").unwrap();
        assert_eq!(sub.subscribe_user_ids, Some(vec!["a".to_owned(), "b\"c".to_owned()]));
        assert_eq!(sub.unsubscribe_user_ids, None);
        let Inbound::Request(req) = decode(r#"{"reqIdentifier":2005,"data":{"unsubscribeUserID":["a"]}}"#).unwrap()
        else {
            panic!()
        };
        let sub: SubUserOnlineStatus = data(&req, "2005").unwrap();
        assert_eq!((sub.subscribe_user_ids, sub.unsubscribe_user_ids), (None, Some(vec!["a".to_owned()])));
        let Inbound::Request(req) = decode(r#"{"reqIdentifier":2005,"data":{"subscribeUserIDs":"a"}}"#).unwrap() else {
            panic!()
        };
        assert!(data::<SubUserOnlineStatus>(&req, "2005").is_err(), "a string is not a list");
    }

    #[test]
    fn presence_answer_and_push_have_openims_shape() {
        let Inbound::Request(req) = decode(r#"{"reqIdentifier":2005,"msgIncr":"3","operationID":"o"}"#).unwrap() else {
            panic!()
        };
        let tips = SubUserOnlineStatusTips {
            subscribers: vec![
                UserOnlineStatus { user_id: "u1", online_platform_ids: vec![1, 5] },
                UserOnlineStatus { user_id: "u2", online_platform_ids: vec![] },
            ],
        };
        assert_eq!(
            parse(&response(Some(&req), codes::OK, "", tips)),
            json!({"reqIdentifier":2005,"msgIncr":"3","operationID":"o","errCode":0,"errMsg":"",
                   "data":{"subscribers":[{"userID":"u1","onlinePlatformIDs":[1,5]},
                                          {"userID":"u2","onlinePlatformIDs":[]}]}})
        );
        assert_eq!(
            parse(&presence_frame("u\"1", vec![3])),
            json!({"reqIdentifier":2005,"msgIncr":"","operationID":"","errCode":0,"errMsg":"",
                   "data":{"subscribers":[{"userID":"u\"1","onlinePlatformIDs":[3]}]}})
        );
    }
}

//! Entry points for `fuzz/` and the property tests into crate-private code: the envelope
//! decoder and encoder, and a harness that runs one connection's server side (tungstenite's
//! handshake and frames, the session logic, dispatch, the roles) over an in-memory pipe.
//!
//! Not an API: hidden from the docs and free to change. It owns no gateway logic: every
//! function calls the code the gateway runs, so a fuzzer exercises the real thing. It must not
//! touch sockets or threads.

use serde_json::value::RawValue;

use crate::protocol::{self, Inbound, SendMsg, SetBackground, SubUserOnlineStatus};

pub use crate::reactor::harness::{
    login_query, run, upgrade_request, Login, Outcome, Script, Step, Transcript, SECRET, USER,
};

/// What [`decode`] read from a client frame, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// `{"type":"ping"}`.
    Ping,
    /// A request envelope.
    Request {
        /// `reqIdentifier`.
        req_identifier: Option<i32>,
        /// `sendID`.
        send_id: String,
        /// `operationID`.
        operation_id: String,
        /// `msgIncr`.
        msg_incr: String,
        /// `data`, as it was in the frame (`None` when absent or `null`).
        data: Option<String>,
    },
}

/// Decodes a client frame as the reactor does (`protocol::decode`).
pub fn decode(text: &str) -> Result<Decoded, String> {
    match protocol::decode(text).map_err(|e| e.0)? {
        Inbound::Ping => Ok(Decoded::Ping),
        Inbound::Request(r) => Ok(Decoded::Request {
            req_identifier: r.req_identifier,
            send_id: r.send_id.into_owned(),
            operation_id: r.operation_id.into_owned(),
            msg_incr: r.msg_incr.into_owned(),
            data: r.data.map(|d| d.get().to_owned()),
        }),
    }
}

/// Encodes a response envelope as the gateway does (`protocol::envelope`); `data` is JSON.
pub fn envelope(
    req_identifier: i32,
    msg_incr: &str,
    operation_id: &str,
    err_code: i32,
    err_msg: &str,
    data: &str,
) -> Result<String, String> {
    let data: &RawValue = serde_json::from_str(data).map_err(|e| e.to_string())?;
    Ok(protocol::envelope(req_identifier, msg_incr, operation_id, err_code, err_msg, data))
}

/// Decodes a frame and every `data` the gateway knows (1003 send, 2004, 2005), and encodes what
/// a valid send produces (the 2001 push and the ack), as the dispatcher does. Returns how many
/// of the decoders accepted the frame. Panics only if an encoder produces something that is
/// not JSON or loses the message's content: a bug.
pub fn decode_everything(text: &str) -> usize {
    let Ok(Inbound::Request(req)) = protocol::decode(text) else { return 0 };
    let mut accepted = 1;
    accepted += usize::from(protocol::data::<SetBackground>(&req, "2004").is_ok());
    accepted += usize::from(protocol::data::<SubUserOnlineStatus>(&req, "2005").is_ok());
    let _ = protocol::error_response(Some(&req), protocol::codes::ARGS, "fuzz");
    if let Ok(msg) = protocol::data::<SendMsg<'_>>(&req, "1003") {
        accepted += 1;
        let push = protocol::push_frame(&req.send_id, &req.operation_id, &msg, "fuzz-0-1", 1);
        let push: serde_json::Value = serde_json::from_str(&push).expect("a push is JSON");
        let content: serde_json::Value = serde_json::from_str(msg.content.get()).expect("content is JSON");
        assert_eq!(push["data"]["msgs"][0]["content"], content, "the push carries the content untouched");
        assert_eq!(push["data"]["msgs"][0]["recvID"].as_str(), Some(msg.recv_id.as_ref()));
        let ack = protocol::SendAck {
            server_msg_id: "fuzz-0-1",
            client_msg_id: &msg.client_msg_id,
            send_time: 1,
            delivered: 0,
        };
        let ack = protocol::response(Some(&req), protocol::codes::OK, "", ack);
        let ack = decode(&ack).expect("an ack decodes as an envelope");
        let Decoded::Request { msg_incr, operation_id, .. } = ack else { panic!("an ack is not a ping") };
        assert_eq!((msg_incr.as_str(), operation_id.as_str()), (req.msg_incr.as_ref(), req.operation_id.as_ref()));
    }
    accepted
}

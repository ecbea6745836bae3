//! The few protocol pieces the scenarios need: the 1003 send frame they write, and borrowed
//! views of the frames they read (only the fields they look at: reqIdentifier, msgIncr, errCode,
//! the ack's clientMsgID and delivered, the pushed messages' clientMsgID).
//!
//! Owns the clientMsgID format (`SENDER.SEQ.NANOS`, unique per run, carrying the send time).
//! Must not allocate for fields it does not need, and must never panic on what a server sends:
//! everything returns `Option`/`Result` for the caller to count.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

pub const SEND: i64 = 1003;
pub const PUSH: i64 = 2001;
pub const KICK: i64 = 2002;

/// The envelope of a gateway → client frame.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "reqIdentifier", default)]
    pub req: i64,
    #[serde(rename = "msgIncr", default, borrow)]
    pub msg_incr: Option<Cow<'a, str>>,
    #[serde(rename = "errCode", default)]
    pub err_code: i64,
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
}

impl<'a> Frame<'a> {
    pub fn parse(text: &'a str) -> Result<Frame<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The ack's data (`delivered`); `None` when absent or malformed.
    pub fn ack(&self) -> Option<Ack> {
        serde_json::from_str(self.data?.get()).ok()
    }

    /// The pushed messages; `None` when absent or malformed.
    pub fn push(&self) -> Option<Push<'a>> {
        serde_json::from_str(self.data?.get()).ok()
    }

    /// msgIncr as a number, when it is one.
    pub fn incr(&self) -> Option<u64> {
        self.msg_incr.as_deref()?.parse().ok()
    }
}

#[derive(Debug, Deserialize)]
pub struct Ack {
    #[serde(default)]
    pub delivered: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct Push<'a> {
    #[serde(borrow, default)]
    pub msgs: Vec<Pushed<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct Pushed<'a> {
    #[serde(rename = "clientMsgID", default, borrow)]
    pub client_msg_id: Option<Cow<'a, str>>,
}

/// A clientMsgID: who sent it, its sequence number, and when (ns since the run started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgId {
    pub sender: u32,
    pub seq: u32,
    pub sent_ns: u64,
}

impl MsgId {
    pub fn parse(s: &str) -> Option<MsgId> {
        let mut it = s.split('.');
        let id = MsgId {
            sender: it.next()?.parse().ok()?,
            seq: it.next()?.parse().ok()?,
            sent_ns: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(id)
    }

    /// The message's identity without the time: sender in the high half.
    pub fn key(&self) -> u64 {
        (u64::from(self.sender) << 32) | u64::from(self.seq)
    }
}

/// Writes a 1003 frame. `content_json` is already JSON (e.g. `"xxxx"`).
pub fn send_frame(send_id: &str, incr: u64, recv_id: &str, id: MsgId, content_json: &str) -> String {
    let mut s = String::with_capacity(160 + send_id.len() + recv_id.len() + content_json.len());
    let _ = write!(
        s,
        r#"{{"reqIdentifier":1003,"sendID":"{send_id}","operationID":"stress","msgIncr":"{incr}","data":{{"recvID":"{recv_id}","clientMsgID":"{}.{}.{}","contentType":101,"content":{content_json}}}}}"#,
        id.sender, id.seq, id.sent_ns
    );
    s
}

/// `n` bytes of content as a JSON string.
pub fn content(n: usize) -> String {
    let mut s = String::with_capacity(n + 2);
    s.push('"');
    s.extend(std::iter::repeat_n('x', n));
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_send_and_reads_acks_and_pushes() {
        let id = MsgId { sender: 7, seq: 3, sent_ns: 123 };
        let text = send_frame("u7", 3, "u9", id, &content(4));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["data"]["content"], "xxxx");
        assert_eq!(MsgId::parse(v["data"]["clientMsgID"].as_str().unwrap()), Some(id));
        assert_eq!(id.key(), (7 << 32) | 3);

        let f = Frame::parse(
            r#"{"reqIdentifier":1003,"msgIncr":"3","errCode":0,"data":{"clientMsgID":"7.3.123","delivered":2}}"#,
        )
        .unwrap();
        assert_eq!((f.req, f.incr()), (SEND, Some(3)));
        assert_eq!(f.ack().unwrap().delivered, Some(2));
        let f = Frame::parse(r#"{"reqIdentifier":2001,"data":{"msgs":[{"clientMsgID":"1.2.3","content":{"a":1}}]}}"#)
            .unwrap();
        assert_eq!(f.push().unwrap().msgs[0].client_msg_id.as_deref(), Some("1.2.3"));
        let f = Frame::parse(r#"{"reqIdentifier":1003,"data":null}"#).unwrap();
        assert!(f.ack().is_none());
        assert!(Frame::parse("not json").is_err());
        assert!(Frame::parse(r#"{"reqIdentifier":"x"}"#).is_err());
        assert_eq!(MsgId::parse("1.2"), None);
        assert_eq!(MsgId::parse("1.2.3.4"), None);
    }
}

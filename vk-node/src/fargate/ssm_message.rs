//! The Session Manager data channel's binary message (what ECS Exec streams over its
//! WebSocket, in both directions), as AWS's session-manager-plugin reads and writes it:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | header length, 116 (big-endian, as every number here) |
//! | 32 | message type, ASCII padded with spaces (`input_stream_data`, `output_stream_data`, `acknowledge`, `channel_closed`, …) |
//! | 4 | schema version, 1 |
//! | 8 | created, ms since the epoch |
//! | 8 | sequence number (per direction, from 0) |
//! | 8 | flags |
//! | 16 | message id: a UUID's last 8 bytes, then its first 8 |
//! | 32 | SHA-256 of the payload |
//! | 4 | payload type ([`PayloadType`]) |
//! | 4 | payload length |
//! | … | payload |
//!
//! The test bed's fake Session Manager endpoint is built on this module and is itself
//! checked with the real plugin, so this reading is the plugin's, not ours alone.

use sha2::{Digest, Sha256};

/// Keystrokes and the like, client to agent.
pub const INPUT_STREAM: &str = "input_stream_data";
/// Output, agent to client.
pub const OUTPUT_STREAM: &str = "output_stream_data";
/// An acknowledgement of one stream message.
pub const ACKNOWLEDGE: &str = "acknowledge";
/// The agent ended the session.
pub const CHANNEL_CLOSED: &str = "channel_closed";

/// The header's length: everything before the payload length field.
pub const HEADER_LENGTH: u32 = 116;
const TYPE_LENGTH: usize = 32;

/// What a stream message's payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum PayloadType {
    /// Output, or input keystrokes.
    Output = 1,
    /// An error text.
    Error = 2,
    /// A terminal size, `{"cols": …, "rows": …}`.
    Size = 3,
    /// Parameters.
    Parameter = 4,
    /// The agent's handshake request.
    HandshakeRequest = 5,
    /// The client's answer to it.
    HandshakeResponse = 6,
    /// The agent's end of the handshake.
    HandshakeComplete = 7,
    /// Flags (terminate, disconnect).
    Flag = 10,
    /// Standard error (non-interactive commands).
    StdErr = 11,
    /// The command's exit code (non-interactive commands).
    ExitCode = 12,
}

impl PayloadType {
    /// The type of a number on the wire, if known.
    pub fn from_wire(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Output,
            2 => Self::Error,
            3 => Self::Size,
            4 => Self::Parameter,
            5 => Self::HandshakeRequest,
            6 => Self::HandshakeResponse,
            7 => Self::HandshakeComplete,
            10 => Self::Flag,
            11 => Self::StdErr,
            12 => Self::ExitCode,
            _ => return None,
        })
    }
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentMessage {
    /// [`INPUT_STREAM`], [`OUTPUT_STREAM`], [`ACKNOWLEDGE`], [`CHANNEL_CLOSED`], …
    pub message_type: String,
    /// Always 1.
    pub schema_version: u32,
    /// Ms since the epoch.
    pub created_ms: u64,
    /// Per direction, from 0 (0 on acknowledgements).
    pub sequence_number: i64,
    /// 3 on acknowledgements, else 0 (1 on a stream's first message from some agents).
    pub flags: u64,
    /// A UUID, in its usual byte order.
    pub message_id: [u8; 16],
    /// A [`PayloadType`] number (0 on acknowledgements).
    pub payload_type: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

/// The UUID `id` in its hyphenated form, as acknowledgements name messages.
pub fn uuid_text(id: &[u8; 16]) -> String {
    let h = hex::encode(id);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A random (version 4) UUID.
pub fn new_message_id() -> [u8; 16] {
    let mut id: [u8; 16] = rand::random();
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

impl AgentMessage {
    /// A stream message (`message_type` [`INPUT_STREAM`] or [`OUTPUT_STREAM`]).
    pub fn stream(
        message_type: &str,
        sequence_number: i64,
        payload_type: PayloadType,
        payload: Vec<u8>,
    ) -> Self {
        Self {
            message_type: message_type.to_owned(),
            schema_version: 1,
            created_ms: now_ms(),
            sequence_number,
            flags: 0,
            message_id: new_message_id(),
            payload_type: payload_type as u32,
            payload,
        }
    }

    /// The acknowledgement of this message.
    pub fn acknowledgement(&self) -> Self {
        let content = serde_json::json!({
            "AcknowledgedMessageType": self.message_type,
            "AcknowledgedMessageId": uuid_text(&self.message_id),
            "AcknowledgedMessageSequenceNumber": self.sequence_number,
            "IsSequentialMessage": true,
        });
        Self {
            message_type: ACKNOWLEDGE.to_owned(),
            schema_version: 1,
            created_ms: now_ms(),
            sequence_number: 0,
            flags: 3,
            message_id: new_message_id(),
            payload_type: 0,
            payload: content.to_string().into_bytes(),
        }
    }

    /// The sequence number an acknowledgement acknowledges.
    pub fn acknowledged_sequence(&self) -> Option<i64> {
        let content: serde_json::Value = serde_json::from_slice(&self.payload).ok()?;
        content["AcknowledgedMessageSequenceNumber"].as_i64()
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LENGTH as usize + 4 + self.payload.len());
        out.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
        let mut kind = [b' '; TYPE_LENGTH];
        let name = self.message_type.as_bytes();
        kind[..name.len().min(TYPE_LENGTH)].copy_from_slice(&name[..name.len().min(TYPE_LENGTH)]);
        out.extend_from_slice(&kind);
        out.extend_from_slice(&self.schema_version.to_be_bytes());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&self.sequence_number.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.message_id[8..16]);
        out.extend_from_slice(&self.message_id[0..8]);
        out.extend_from_slice(&Sha256::digest(&self.payload));
        out.extend_from_slice(&self.payload_type.to_be_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Reads a message, refusing one that is cut short or whose payload does not match its
    /// digest.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let number = |at: usize, len: usize| -> Result<&[u8], String> {
            bytes
                .get(at..at + len)
                .ok_or_else(|| format!("message cut short at byte {at} of {}", bytes.len()))
        };
        let u32_at = |at| -> Result<u32, String> {
            Ok(u32::from_be_bytes(
                number(at, 4)?.try_into().expect("4 bytes"),
            ))
        };
        let u64_at = |at| -> Result<u64, String> {
            Ok(u64::from_be_bytes(
                number(at, 8)?.try_into().expect("8 bytes"),
            ))
        };
        let header = u32_at(0)? as usize;
        if header < HEADER_LENGTH as usize {
            return Err(format!("header length {header}, less than {HEADER_LENGTH}"));
        }
        let kind = number(4, TYPE_LENGTH)?;
        let message_type = String::from_utf8_lossy(kind)
            .trim_matches(|c: char| c == ' ' || c == '\0')
            .to_owned();
        let mut message_id = [0u8; 16];
        message_id[8..16].copy_from_slice(number(64, 8)?);
        message_id[0..8].copy_from_slice(number(72, 8)?);
        let digest = number(80, 32)?.to_vec();
        let payload_length = u32_at(header)? as usize;
        let payload = number(header + 4, payload_length)?.to_vec();
        if payload_length > 0 && Sha256::digest(&payload).as_slice() != digest.as_slice() {
            return Err("payload digest does not match".into());
        }
        Ok(Self {
            message_type,
            schema_version: u32_at(36)?,
            created_ms: u64_at(40)?,
            sequence_number: u64_at(48)? as i64,
            flags: u64_at(56)?,
            message_id,
            payload_type: u32_at(112)?,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_wire_and_keeps_the_plugins_layout() {
        let message = AgentMessage::stream(
            INPUT_STREAM,
            7,
            PayloadType::Size,
            br#"{"cols":80,"rows":24}"#.to_vec(),
        );
        let wire = message.encode();
        assert_eq!(&wire[0..4], &116u32.to_be_bytes());
        assert_eq!(&wire[4..4 + INPUT_STREAM.len()], INPUT_STREAM.as_bytes());
        assert_eq!(wire[4 + INPUT_STREAM.len()], b' ', "padded with spaces");
        assert_eq!(
            &wire[64..72],
            &message.message_id[8..16],
            "the UUID's halves swapped"
        );
        assert_eq!(wire.len(), 120 + message.payload.len());
        assert_eq!(AgentMessage::decode(&wire).unwrap(), message);
    }

    #[test]
    fn cut_or_altered_messages_are_refused() {
        let wire =
            AgentMessage::stream(OUTPUT_STREAM, 0, PayloadType::Output, b"hello".to_vec()).encode();
        assert!(AgentMessage::decode(&wire[..wire.len() - 1]).is_err());
        let mut altered = wire.clone();
        *altered.last_mut().unwrap() = b'!';
        assert_eq!(
            AgentMessage::decode(&altered).unwrap_err(),
            "payload digest does not match"
        );
    }

    #[test]
    fn an_acknowledgement_names_the_message_by_type_id_and_sequence() {
        let message = AgentMessage::stream(OUTPUT_STREAM, 4, PayloadType::Output, b"x".to_vec());
        let ack = message.acknowledgement();
        assert_eq!(ack.message_type, ACKNOWLEDGE);
        assert_eq!(ack.flags, 3);
        assert_eq!(ack.acknowledged_sequence(), Some(4));
        let content: serde_json::Value = serde_json::from_slice(&ack.payload).unwrap();
        assert_eq!(
            content["AcknowledgedMessageId"],
            uuid_text(&message.message_id)
        );
        assert_eq!(uuid_text(&[0xab; 16]).len(), 36);
    }
}

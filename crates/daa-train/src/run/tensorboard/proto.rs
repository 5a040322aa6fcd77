//! The protocol-buffer messages of a TensorBoard event file, encoded by
//! hand (TensorFlow's `event.proto`, `summary.proto`, `tensor.proto`): only
//! the fields daa writes, with their field numbers.
//!
//! Wire format: each field is a key `(number << 3) | wire_type` as a varint,
//! then a varint (type 0), 8 little-endian bytes (type 1), a varint length
//! and the bytes (type 2), or 4 little-endian bytes (type 5).

/// A message being encoded.
#[derive(Debug, Default)]
pub struct Message(Vec<u8>);

impl Message {
    fn key(&mut self, number: u32, wire_type: u32) {
        self.varint(u64::from((number << 3) | wire_type));
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// An integer field (int64, enum).
    pub fn int(mut self, number: u32, v: i64) -> Self {
        self.key(number, 0);
        self.varint(v as u64);
        self
    }

    /// A `double` field.
    pub fn double(mut self, number: u32, v: f64) -> Self {
        self.key(number, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `float` field.
    pub fn float(mut self, number: u32, v: f32) -> Self {
        self.key(number, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `string` or `bytes` field.
    pub fn bytes(mut self, number: u32, v: &[u8]) -> Self {
        self.key(number, 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    /// A message field.
    pub fn message(self, number: u32, v: Message) -> Self {
        self.bytes(number, &v.0)
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// `Event` (event.proto): `wall_time = 1`, `step = 2`, then one of
/// `file_version = 3`, `summary = 5`, `session_log = 7`; and
/// `source_metadata = 10` (`SourceMetadata.writer = 1`).
pub mod event {
    use super::Message;

    /// An event at `wall_time` (seconds since the epoch) and `step`.
    pub fn new(wall_time: f64, step: u64) -> Message {
        Message::default().double(1, wall_time).int(2, step as i64)
    }

    /// The first event of a file: `file_version = "brain.Event:2"` (the
    /// version whose readers purge by `SessionLog`), and who wrote it.
    pub fn file_version(wall_time: f64) -> Message {
        new(wall_time, 0).bytes(3, b"brain.Event:2").message(10, Message::default().bytes(1, b"daa"))
    }

    /// `SessionLog { status = START (1) }` at `step`: the first opens the
    /// run; at a later one readers drop what an earlier session logged at
    /// this step and after (a resumed run).
    pub fn session_start(wall_time: f64, step: u64) -> Message {
        new(wall_time, step).message(7, Message::default().int(1, 1))
    }

    /// An event carrying `summary`.
    pub fn summary(wall_time: f64, step: u64, summary: Message) -> Message {
        new(wall_time, step).message(5, summary)
    }
}

/// `Summary { repeated Value value = 1 }`; `Value`: `tag = 1`,
/// `simple_value = 2`, `tensor = 8`, `metadata = 9`.
pub mod summary {
    use super::Message;

    /// A summary of scalars and texts.
    #[derive(Debug, Default)]
    pub struct Summary(Message);

    impl Summary {
        /// Adds a scalar (`simple_value`, f32 as TensorBoard stores it).
        pub fn scalar(self, tag: &str, value: f32) -> Self {
            Self(self.0.message(1, Message::default().bytes(1, tag.as_bytes()).float(2, value)))
        }

        /// Adds a text: a scalar `DT_STRING` (7) tensor (`TensorProto`:
        /// `dtype = 1`, `tensor_shape = 2` empty for a scalar, `string_val =
        /// 8`) marked for the text plugin (`SummaryMetadata.plugin_data = 1`
        /// with `PluginData.plugin_name = 1`).
        pub fn text(self, tag: &str, text: &str) -> Self {
            let tensor = Message::default().int(1, 7).message(2, Message::default()).bytes(8, text.as_bytes());
            let metadata = Message::default().message(1, Message::default().bytes(1, b"text"));
            Self(self.0.message(1, Message::default().bytes(1, tag.as_bytes()).message(9, metadata).message(8, tensor)))
        }

        /// The message.
        pub fn into_message(self) -> Message {
            self.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_encoded_as_the_wire_format_says() {
        // Examples of the protobuf encoding guide: 150 as field 1 → 08 96 01;
        // "testing" as field 2 → 12 07 74 65 73 74 69 6e 67.
        assert_eq!(Message::default().int(1, 150).into_bytes(), [0x08, 0x96, 0x01]);
        assert_eq!(Message::default().bytes(2, b"testing").into_bytes(), b"\x12\x07testing");
        assert_eq!(Message::default().float(2, 1.0).into_bytes(), [0x15, 0, 0, 0x80, 0x3f]);
        assert_eq!(Message::default().double(1, 2.0).into_bytes(), [0x09, 0, 0, 0, 0, 0, 0, 0, 0x40]);
        // A negative int64 takes ten bytes (two's complement as u64).
        assert_eq!(Message::default().int(2, -1).into_bytes().len(), 11);
    }
}

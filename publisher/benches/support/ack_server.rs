//! A worker stand-in for the publisher's benchmarks: handshakes announcing `schema`, then acks
//! every batch once its events decode (and answers pings). Included with `#[path]`.

use futures_util::{SinkExt, StreamExt};
use shardtally_publisher::StreamSchema;
use shardtally_publisher::protocol::{Frame, FrameCodec, PROTOCOL_VERSION, Welcome};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// Serves every connection `listener` accepts until it fails.
pub(crate) async fn ack_server(listener: TcpListener, schema: StreamSchema) {
    while let Ok((socket, _)) = listener.accept().await {
        let schema = schema.clone();
        tokio::spawn(async move {
            let mut framed = Framed::new(socket, FrameCodec::default());
            let Some(Ok(Frame::Hello(_))) = framed.next().await else {
                return;
            };
            let welcome = Frame::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                node_id: "bench".into(),
                shard_id: "bench".into(),
                max_frame_len: 16 << 20,
                max_batch_events: 100_000,
                streams: vec![schema],
            });
            if framed.send(welcome).await.is_err() {
                return;
            }
            while let Some(Ok(frame)) = framed.next().await {
                let reply = match frame {
                    Frame::Batch(b) => {
                        if b.validate_events().is_err() {
                            return;
                        }
                        Frame::Ack { seq: b.seq }
                    }
                    Frame::Ping { nonce } => Frame::Pong { nonce },
                    _ => continue,
                };
                if framed.send(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

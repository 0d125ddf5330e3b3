//! The TLS-over-TCP transport's connection setup: TLS 1.3 with the relay's
//! certificate and an ALPN of its own ([`ALPN_TCP`]); sessions then run
//! over HTTP/2 ([`super::http2`]).

mod conn;
mod counted;

pub use conn::{Settings, Side, TcpConn, WeakTcpConn};
use counted::Counted;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::net::tls::{client_tls, server_tls, Identity, Trust};
use crate::protocol::ALPN_TCP;

/// The relay's TLS configuration for the TLS-over-TCP transport: the same
/// certificate, TLS 1.3 only, its own ALPN.
pub fn tcp_server_config(identity: Identity) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(Arc::new(server_tls(identity, ALPN_TCP)?))
}

/// The TLS configuration with which hosts and clients dial the relay over
/// TCP.
pub fn tcp_client_config(trust: &Trust) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(Arc::new(client_tls(trust, ALPN_TCP)?))
}

/// Dials the relay at `addr` over TCP and completes TLS as `server_name`.
/// The hello goes on the returned stream as a raw frame; HTTP/2 starts
/// once the relay has answered it.
pub async fn dial(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    // Keystrokes go out at once, as over QUIC.
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())?;
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_TCP) {
        anyhow::bail!("{addr} is not a shellrelay relay: it did not agree to shellrelay-tcp/1");
    }
    Ok(tls)
}

/// Completes TLS on a TCP connection the relay accepted. A peer that asks
/// for another protocol fails here, before any of ours is read.
pub async fn accept(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
) -> std::io::Result<server::TlsStream<TcpStream>> {
    tcp.set_nodelay(true)?;
    let tls = acceptor.accept(tcp).await?;
    // rustls lets a client that offers no ALPN at all through.
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_TCP) {
        return Err(std::io::Error::other(
            "the peer did not ask for shellrelay-tcp/1",
        ));
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tls::self_signed;
    use crate::protocol::ALPN;

    /// A TLS-over-TCP handshake on loopback between the relay's TCP
    /// configuration and a client asking for `alpn`: the protocol agreed.
    async fn tcp_handshake(alpn: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let identity = self_signed(&["localhost".to_owned()])?;
        let trust = Trust::Pinned(identity.chain.clone());
        let server = tokio_rustls::TlsAcceptor::from(tcp_server_config(identity)?);
        let mut client = client_tls(&trust, alpn)?;
        client.alpn_protocols = vec![alpn.to_vec()];
        let client = tokio_rustls::TlsConnector::from(Arc::new(client));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accept = async move {
            let (tcp, _) = listener.accept().await?;
            server.accept(tcp).await
        };
        let dial = async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls_pki_types::ServerName::try_from("localhost")?;
            Ok::<_, anyhow::Error>(client.connect(name, tcp).await?)
        };
        let (accepted, dialled) = tokio::join!(accept, dial);
        let dialled = dialled?;
        accepted?;
        Ok(dialled.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
    }

    #[tokio::test]
    async fn the_tcp_transport_speaks_tls_13_with_its_own_alpn_only() {
        let agreed = tcp_handshake(ALPN_TCP).await.unwrap();
        assert_eq!(agreed.as_deref(), Some(ALPN_TCP));
        // A peer asking for the QUIC protocol over TCP is turned away in
        // the handshake.
        assert!(tcp_handshake(ALPN).await.is_err());
        let identity = crate::net::tls::self_signed(&["localhost".to_owned()]).unwrap();
        let config = tcp_client_config(&Trust::Pinned(identity.chain)).unwrap();
        assert_eq!(config.alpn_protocols, vec![ALPN_TCP.to_vec()]);
    }

    #[tokio::test]
    async fn a_hello_then_http2_sessions_in_the_direction_the_role_needs() {
        use crate::net::transport::http2;
        use crate::protocol::{read_frame, write_frame, Frame};
        let identity = self_signed(&["localhost".to_owned()]).unwrap();
        let trust = Trust::Pinned(identity.chain.clone());
        let acceptor = TlsAcceptor::from(tcp_server_config(identity).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The relay: a raw frame in, a raw frame out, then HTTP/2 as the
        // client towards a host, which opens a session to it.
        let relay = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = accept(tcp, &acceptor).await.unwrap();
            let hello = read_frame(&mut tls).await.unwrap();
            write_frame(&mut tls, &hello).await.unwrap();
            let (opener, driver) = http2::client(tls, 64 * 1024, None).await.unwrap();
            tokio::spawn(driver.run);
            let (mut send, _recv) = opener.open().await.unwrap();
            send.write_chunk(bytes::Bytes::from_static(b"session"))
                .await
                .unwrap();
            send.finish().unwrap();
            send
        });
        let config = tcp_client_config(&trust).unwrap();
        let mut tls = dial(addr, "localhost", config).await.unwrap();
        let hello = Frame::Refused {
            reason: crate::protocol::Reason::Done,
            message: "stands in for a hello".into(),
        };
        write_frame(&mut tls, &hello).await.unwrap();
        let answer = read_frame(&mut tls).await.unwrap();
        assert_eq!(format!("{answer:?}"), format!("{hello:?}"));
        // The host: HTTP/2 as the server, taking the relay's session.
        let (accepter, driver) = http2::server(tls, 64 * 1024, u32::MAX, None).await.unwrap();
        tokio::spawn(driver.run);
        let (_send, mut recv) = accepter.accept().await.unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut recv, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"session");
        drop(relay.await.unwrap());
    }
}

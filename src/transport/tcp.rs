//! The TLS-over-TCP transport's connection setup: TLS 1.3 with the relay's
//! certificate and an ALPN of its own ([`ALPN_TCP`]); sessions then run
//! over HTTP/2 ([`super::http2`]).

use std::sync::Arc;

use crate::protocol::ALPN_TCP;
use crate::tls::{client_tls, server_tls, Identity, Trust};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ALPN;
    use crate::tls::self_signed;

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
        let config = tcp_client_config(&Trust::Pinned(Vec::new())).unwrap();
        assert_eq!(config.alpn_protocols, vec![ALPN_TCP.to_vec()]);
    }
}

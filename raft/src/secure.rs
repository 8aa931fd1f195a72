//! TLS on the transport: the stream a connection runs on, and who the peer is.
//!
//! With [`TransportTls`] every connection is TLS 1.3, both ways: the listener asks for a
//! client certificate (a node's or a user's; none for a node that comes to join with a token)
//! and the dialer checks the listener's. Who the peer is comes from its verified certificate
//! ([`Peer`]), never from what it says in a message. The certificates themselves (what they
//! name, which CA they chain to) are the caller's business: it builds the rustls configs and
//! the [`TransportTls::identify`] function.
//!
//! Without it (`--insecure`) the transport is plain TCP and a dialer is whoever it says it is.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// Who is at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A certificate of the cluster CA naming this node.
    Node(u64),
    /// A certificate of the cluster CA naming this user.
    User(String),
    /// A TLS connection without a client certificate: it may only ask to join with a token.
    Anonymous,
    /// A plaintext connection (`--insecure`): nothing is known, everything is allowed.
    Unverified,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Node(id) => write!(f, "node {id}"),
            Peer::User(name) => write!(f, "user {name:?}"),
            Peer::Anonymous => f.write_str("a client without a certificate"),
            Peer::Unverified => f.write_str("an unverified peer (insecure mode)"),
        }
    }
}

/// Who a verified end-entity certificate (DER) speaks for; `None` if it names no one.
pub type Identify = dyn Fn(&[u8]) -> Option<Peer> + Send + Sync;

/// The TLS side of a transport: how to accept, how to dial, and how to read a certificate.
#[derive(Clone)]
pub struct TransportTls {
    /// `None` on a client, which only dials.
    pub acceptor: Option<TlsAcceptor>,
    pub connector: TlsConnector,
    pub identify: Arc<Identify>,
}

impl std::fmt::Debug for TransportTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportTls").finish_non_exhaustive()
    }
}

/// The name a dialer gives in its TLS hello. Certificates are checked by the identity they
/// name (a SAN URI, see [`TransportTls::identify`]), not by host name, so one fixed name
/// serves every dial.
const SERVER_NAME: &str = "metakv";

impl TransportTls {
    /// Who presented `certs` (the peer's chain, end entity first), already verified by rustls.
    pub fn peer_of(&self, certs: Option<&[CertificateDer<'static>]>) -> Option<Peer> {
        match certs.and_then(|c| c.first()) {
            None => Some(Peer::Anonymous),
            Some(cert) => (self.identify)(cert.as_ref()),
        }
    }

    /// Dials over TLS on `tcp`; returns the stream and the listener's identity.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<(Stream, Peer)> {
        let name = ServerName::try_from(SERVER_NAME).expect("a valid name");
        let tls = self.connector.connect(name, tcp).await?;
        let peer = self
            .peer_of(tls.get_ref().1.peer_certificates())
            .filter(|p| *p != Peer::Anonymous)
            .ok_or_else(|| io::Error::other("the node's certificate names no metakv node"))?;
        Ok((Stream::Tls(Box::new(TlsStream::Client(tls))), peer))
    }

    /// Accepts TLS on `tcp`; returns the stream and the dialer's identity.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<(Stream, Peer)> {
        let acceptor = self
            .acceptor
            .as_ref()
            .ok_or_else(|| io::Error::other("a client's transport accepts no connections"))?;
        let tls = acceptor.accept(tcp).await?;
        let peer = self
            .peer_of(tls.get_ref().1.peer_certificates())
            .ok_or_else(|| io::Error::other("the client certificate names no metakv subject"))?;
        Ok((Stream::Tls(Box::new(TlsStream::Server(tls))), peer))
    }
}

/// A connection's byte stream: plain TCP or TLS over it.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// True when the peer has closed the connection or sent something unasked, checked without
    /// taking any bytes from it: on an idle connection nothing may be waiting (TLS 1.3 session
    /// tickets are not sent, see `metakv::tls`), so anything is an end or an alert.
    pub fn is_stale(&self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        !matches!(self.tcp().poll_peek(&mut cx, &mut buf), Poll::Pending)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

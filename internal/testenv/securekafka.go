package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/twmb/franz-go/pkg/kfake"
)

// SecureKafka starts an embedded kfake cluster (whatever KAFKA_BROKERS
// says) that takes only SASL PLAIN-authenticated clients, over TLS when
// withTLS, and returns its addresses and a Dialer that gets in: the
// settings a kafkago.ReaderConfig.Dialer carries on a secured cluster. The
// cluster is closed after t.
func SecureKafka(t testing.TB, withTLS bool) ([]string, *kafkago.Dialer) {
	t.Helper()
	const user, pass = "tracebridge", "s3cret"
	opts := []kfake.Opt{kfake.EnableSASL(), kfake.Superuser("PLAIN", user, pass)}
	d := &kafkago.Dialer{ClientID: "tracebridge-secure", Timeout: 10 * time.Second,
		SASLMechanism: plain.Mechanism{Username: user, Password: pass}}
	if withTLS {
		server, client := tlsPair(t)
		opts = append(opts, kfake.TLS(server))
		d.TLS = client
	}
	addrs, stop, err := StartKafka(opts...)
	if err != nil {
		t.Fatalf("start secured embedded Kafka: %v", err)
	}
	t.Cleanup(stop)
	return addrs, d
}

// tlsPair returns a server config with a fresh self-signed certificate for
// 127.0.0.1 and a client config that trusts only it.
func tlsPair(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tracebridge test broker"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}},
		MinVersion: tls.VersionTLS12}
	client = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return server, client
}

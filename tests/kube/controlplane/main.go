// Command controlplane runs a real Kubernetes control plane on loopback for tokensync's tests:
// etcd, kube-apiserver and kube-controller-manager (garbage collector, namespace and
// ServiceAccount controllers), with their own PKI and ServiceAccount issuer, as envtest does for
// controller-runtime.
//
// Protocol (tests/support/kube.rs speaks it): it prints one JSON line on stdout when the control
// plane is ready, then reads commands from stdin, one a line, and answers each with one JSON
// line ({"ok":true,...} or {"ok":false,"error":"..."}):
//
//	stop apiserver | start apiserver      SIGTERM, SIGKILL after 3 s; start on the same port and etcd
//	stop etcd | start etcd                the same for etcd (same data directory)
//	user NAME [GROUP,GROUP...]            a kubeconfig for a client certificate user
//
// When stdin closes (the test process exited, however it died) or on SIGTERM/SIGINT it stops
// every child and removes its work directory. Children also get SIGKILL if this process is
// killed (Pdeathsig), so nothing outlives a test run.
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

type pki struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  []byte
}

func newPKI() (*pki, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tokensync-test-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &pki{caCert: cert, caKey: key, caPEM: pemBlock("CERTIFICATE", der)}, nil
}

var serial int64 = 1

// issue signs a certificate for a server (ips, dns) or a client (cn, orgs).
func (p *pki) issue(cn string, orgs []string, server bool, ips []net.IP, dns []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		IPAddresses:  ips,
		DNSNames:     dns,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), pemBlock("EC PRIVATE KEY", keyDER), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// kubeconfig writes a kubeconfig for a client certificate user and returns its path.
func (p *pki) kubeconfig(dir, server, name string, orgs []string) (string, error) {
	certPEM, keyPEM, err := p.issue(name, orgs, false, nil, nil)
	if err != nil {
		return "", err
	}
	b64 := base64.StdEncoding.EncodeToString
	ctx := "tokensync-test"
	content := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: %[2]s
    certificate-authority-data: %[3]s
users:
- name: %[4]s
  user:
    client-certificate-data: %[5]s
    client-key-data: %[6]s
contexts:
- name: %[1]s
  context:
    cluster: %[1]s
    user: %[4]s
    namespace: default
current-context: %[1]s
`, ctx, server, b64(p.caPEM), name, b64(certPEM), b64(keyPEM))
	path := filepath.Join(dir, "kubeconfig-"+safeName(name))
	return path, os.WriteFile(path, []byte(content), 0o600)
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '_'
	}, s)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// proc is one child program that can be stopped and started again with the same arguments.
type proc struct {
	name string
	path string
	args []string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// spawner starts every child from one goroutine locked to its OS thread: Pdeathsig fires
// when the thread that started a child exits, so that thread must live as long as we do.
type spawner struct{ requests chan spawnRequest }

type spawnRequest struct {
	p     *proc
	reply chan error
}

func newSpawner() *spawner {
	s := &spawner{requests: make(chan spawnRequest)}
	go func() {
		runtime.LockOSThread()
		for r := range s.requests {
			r.reply <- r.p.startOnThisThread()
		}
	}()
	return s
}

func (s *spawner) start(p *proc) error {
	reply := make(chan error)
	s.requests <- spawnRequest{p, reply}
	return <-reply
}

func (p *proc) startOnThisThread() error {
	logFile, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.path, p.args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("cannot start %s: %w", p.name, err)
	}
	p.cmd = cmd
	p.done = make(chan struct{})
	done := p.done
	go func() {
		cmd.Wait()
		logFile.Close()
		close(done)
	}()
	return nil
}

func (p *proc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits; SIGKILL after the grace period.
func (p *proc) stop(grace time.Duration) {
	if !p.running() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

type plane struct {
	dir        string
	binDir     string
	pki        *pki
	spawn      *spawner
	etcd       *proc
	apiserver  *proc
	kcm        *proc
	server     string
	issuer     string
	admin      string
	httpClient *http.Client
	mu         sync.Mutex
}

func (c *plane) bin(name string) string { return filepath.Join(c.binDir, name) }

func (c *plane) write(name string, content []byte) string {
	path := filepath.Join(c.dir, name)
	if err := os.WriteFile(path, content, 0o600); err != nil {
		fatal(err)
	}
	return path
}

func (c *plane) setUp(featureGates, crds string) error {
	p, err := newPKI()
	if err != nil {
		return err
	}
	c.pki = p
	caFile := c.write("ca.crt", p.caPEM)
	loopback := []net.IP{net.ParseIP("127.0.0.1")}
	srvCert, srvKey, err := p.issue("kube-apiserver", nil, true, append(loopback, net.ParseIP("10.0.0.1")),
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	if err != nil {
		return err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	saKeyFile := c.write("sa.key", pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)))
	saPubFile := c.write("sa.pub", pemBlock("PUBLIC KEY", saPub))

	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return err
		}
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	c.server = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	c.issuer = c.server

	c.etcd = &proc{name: "etcd", path: c.bin("etcd"), log: filepath.Join(c.dir, "etcd.log"), args: []string{
		"--name=default",
		"--data-dir=" + filepath.Join(c.dir, "etcd-data"),
		"--listen-client-urls=" + etcdURL,
		"--advertise-client-urls=" + etcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=default=" + peerURL,
		"--listen-metrics-urls=",
		"--unsafe-no-fsync",
		"--log-level=warn",
	}}
	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", apiPort),
		"--cert-dir=" + filepath.Join(c.dir, "apiserver-certs"),
		"--tls-cert-file=" + c.write("apiserver.crt", srvCert),
		"--tls-private-key-file=" + c.write("apiserver.key", srvKey),
		"--client-ca-file=" + caFile,
		"--service-account-issuer=" + c.issuer,
		"--service-account-key-file=" + saPubFile,
		"--service-account-signing-key-file=" + saKeyFile,
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=false",
		"--profiling=false",
		"--v=1",
	}
	if featureGates != "" {
		apiArgs = append(apiArgs, "--feature-gates="+featureGates)
	}
	c.apiserver = &proc{name: "kube-apiserver", path: c.bin("kube-apiserver"), log: filepath.Join(c.dir, "kube-apiserver.log"), args: apiArgs}

	kcmConfig, err := p.kubeconfig(c.dir, c.server, "system:kube-controller-manager", nil)
	if err != nil {
		return err
	}
	c.kcm = &proc{name: "kube-controller-manager", path: c.bin("kube-controller-manager"), log: filepath.Join(c.dir, "kube-controller-manager.log"), args: []string{
		"--kubeconfig=" + kcmConfig,
		// The names every version since 1.27 takes (1.28 renamed them, keeping these as aliases).
		"--controllers=garbagecollector,namespace,serviceaccount",
		"--leader-elect=false",
		// No HTTPS endpoint: nothing reads it, and a port chosen now but bound seconds later
		// could be taken by another control plane starting at the same time.
		"--secure-port=0",
		"--root-ca-file=" + caFile,
		// Each controller acts as its own ServiceAccount with its bootstrap role, as on a real
		// cluster (as one user, the namespace controller may not empty a deleted namespace).
		"--use-service-account-credentials=true",
		"--profiling=false",
		"--v=1",
	}}

	if c.admin, err = p.kubeconfig(c.dir, c.server, "tokensync-test-admin", []string{"system:masters"}); err != nil {
		return err
	}
	adminCert, adminKey, err := p.issue("tokensync-test-probe", []string{"system:masters"}, false, nil, nil)
	if err != nil {
		return err
	}
	pair, err := tls.X509KeyPair(adminCert, adminKey)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.caPEM)
	c.httpClient = &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}}, DisableKeepAlives: true},
	}

	if err := c.startEtcd(); err != nil {
		return err
	}
	if err := c.startAPIServer(); err != nil {
		return err
	}
	// CRDs go in before the controller manager starts: its garbage collector discovers the
	// resources it watches when it starts, and again only every 30 s.
	if crds != "" {
		if err := c.kubectl("apply", "--server-side", "-f", crds); err != nil {
			return err
		}
		if err := c.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"); err != nil {
			return err
		}
	}
	if err := c.spawn.start(c.kcm); err != nil {
		return err
	}
	// The ServiceAccount controller creates "default" in every namespace: once it exists in
	// "default", the controller manager is up and its informers have synced.
	return c.waitUntil(c.kcm, 60*time.Second, func() bool {
		return c.status("/api/v1/namespaces/default/serviceaccounts/default") == http.StatusOK
	})
}

func (c *plane) kubectl(args ...string) error {
	cmd := exec.Command(c.bin("kubectl"), append([]string{"--kubeconfig", c.admin}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (c *plane) status(path string) int {
	resp, err := c.httpClient.Get(c.server + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (c *plane) waitUntil(p *proc, timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ok() {
			return nil
		}
		if !p.running() {
			return fmt.Errorf("%s exited; its log ends:\n%s", p.name, p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %s; its log ends:\n%s", p.name, timeout, p.tail())
}

func (c *plane) startEtcd() error {
	if c.etcd.running() {
		return errors.New("etcd is running")
	}
	if err := c.spawn.start(c.etcd); err != nil {
		return err
	}
	url := strings.TrimPrefix(argValue(c.etcd.args, "--listen-client-urls="), "")
	plain := &http.Client{Timeout: time.Second}
	return c.waitUntil(c.etcd, 30*time.Second, func() bool {
		resp, err := plain.Get(url + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func (c *plane) startAPIServer() error {
	if c.apiserver.running() {
		return errors.New("kube-apiserver is running")
	}
	if err := c.spawn.start(c.apiserver); err != nil {
		return err
	}
	return c.waitUntil(c.apiserver, 90*time.Second, func() bool { return c.status("/readyz") == http.StatusOK })
}

func argValue(args []string, prefix string) string {
	for _, a := range args {
		if strings.HasPrefix(a, prefix) {
			return strings.TrimPrefix(a, prefix)
		}
	}
	return ""
}

func (c *plane) shutdown() {
	for _, p := range []*proc{c.kcm, c.apiserver, c.etcd} {
		if p != nil {
			p.stop(5 * time.Second)
		}
	}
	if os.Getenv("TOKENSYNC_KUBE_KEEP") == "" {
		os.RemoveAll(c.dir)
	}
}

func (c *plane) command(line string) map[string]any {
	c.mu.Lock()
	defer c.mu.Unlock()
	fields := strings.Fields(line)
	fail := func(err error) map[string]any { return map[string]any{"ok": false, "error": err.Error()} }
	if len(fields) == 0 {
		return fail(errors.New("empty command"))
	}
	switch {
	case len(fields) == 2 && fields[0] == "stop" && fields[1] == "apiserver":
		// kube-apiserver stops listening at once on SIGTERM, then waits up to 60 s for open
		// connections (watches) to close: as a kubelet with a short grace period would, kill
		// it after 3 s so that it is down, not draining, when this returns.
		c.apiserver.stop(3 * time.Second)
	case len(fields) == 2 && fields[0] == "start" && fields[1] == "apiserver":
		if err := c.startAPIServer(); err != nil {
			return fail(err)
		}
	case len(fields) == 2 && fields[0] == "stop" && fields[1] == "etcd":
		c.etcd.stop(10 * time.Second)
	case len(fields) == 2 && fields[0] == "start" && fields[1] == "etcd":
		if err := c.startEtcd(); err != nil {
			return fail(err)
		}
	case fields[0] == "user" && (len(fields) == 2 || len(fields) == 3):
		var groups []string
		if len(fields) == 3 {
			groups = strings.Split(fields[2], ",")
		}
		path, err := c.pki.kubeconfig(c.dir, c.server, fields[1], groups)
		if err != nil {
			return fail(err)
		}
		return map[string]any{"ok": true, "kubeconfig": path}
	default:
		return fail(fmt.Errorf("unknown command %q", line))
	}
	return map[string]any{"ok": true}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "controlplane:", err)
	os.Exit(1)
}

func main() {
	binDir := flag.String("bin-dir", "", "directory holding etcd, kube-apiserver and kube-controller-manager")
	workDir := flag.String("work-dir", "", "parent of this control plane's work directory (default: the system temp dir)")
	featureGates := flag.String("feature-gates", "", "kube-apiserver --feature-gates")
	crds := flag.String("crds", "", "a file or directory of CRDs to apply before the controller manager starts")
	flag.Parse()
	if *binDir == "" {
		fatal(errors.New("--bin-dir is required"))
	}
	dir, err := os.MkdirTemp(*workDir, "tokensync-kube-")
	if err == nil {
		dir, err = filepath.Abs(dir)
	}
	if err != nil {
		fatal(err)
	}
	c := &plane{dir: dir, binDir: *binDir, spawn: newSpawner()}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	stdinClosed := make(chan struct{})
	lines := make(chan string)
	go func() {
		scanner := bufio.NewScanner(os.Stdin)
		for scanner.Scan() {
			lines <- scanner.Text()
		}
		close(stdinClosed)
	}()

	started := time.Now()
	// Ports are chosen free, then bound when each program starts: another program can take
	// one in between. A start that fails is tried again with new ports, twice.
	var err2 error
	for attempt := 1; attempt <= 3; attempt++ {
		if err2 = c.setUp(*featureGates, *crds); err2 == nil {
			break
		}
		fmt.Fprintf(os.Stderr, "controlplane: start %d of 3 failed: %v\n", attempt, err2)
		for _, p := range []*proc{c.kcm, c.apiserver, c.etcd} {
			if p != nil {
				p.stop(5 * time.Second)
			}
		}
		os.RemoveAll(filepath.Join(c.dir, "etcd-data"))
	}
	if err2 != nil {
		c.shutdown()
		fatal(err2)
	}
	out := json.NewEncoder(os.Stdout)
	out.Encode(map[string]any{
		"ok":         true,
		"server":     c.server,
		"kubeconfig": c.admin,
		"issuer":     c.issuer,
		"caFile":     filepath.Join(c.dir, "ca.crt"),
		"dir":        c.dir,
		"startupMs":  time.Since(started).Milliseconds(),
	})
	for {
		select {
		case line := <-lines:
			out.Encode(c.command(line))
		case <-stdinClosed:
			c.shutdown()
			return
		case <-signals:
			c.shutdown()
			return
		}
	}
}

// natkit-pion-peer: a natkit lab peer on pion/webrtc v3, following docs/lab-peers.md
// (contract version 1). It reads the NATKIT_* environment, speaks the lab's signaling over a
// WebSocket, does offer/answer with the candidates inside the SDP (filtered to the path's
// types; trickled candidates from the other side are accepted too), proves the path with the
// data-channel echo and prints one JSON result line with the pair pion selected.
//
// Built by `natkit lab build-stacks` from Debian's Go sources; `natkit-pion-peer -version`
// prints the pion version it was built with.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pion/webrtc/v3"
	"golang.org/x/net/websocket"
)

const contractVersion = 1

const afterIdle = "after idle" // the longevity echo, after NATKIT_IDLE_S of silence

// Set at build time (-ldflags "-X main.pionVersion=...").
var pionVersion = "v3"

type candidateInfo struct {
	Type          string  `json:"type"`
	Address       string  `json:"address"`
	Port          int     `json:"port"`
	Protocol      string  `json:"protocol"`
	RelayProtocol *string `json:"relay_protocol,omitempty"`
}

type selectedPair struct {
	Local  candidateInfo `json:"local"`
	Remote candidateInfo `json:"remote"`
}

type result struct {
	NatkitPeer    int           `json:"natkit_peer"`
	Connected     bool          `json:"connected"`
	TConnectMs    *float64      `json:"t_connect_ms"`
	RttMs         *float64      `json:"rtt_ms"`
	Selected      *selectedPair `json:"selected"`
	RelayProtocol *string       `json:"relay_protocol"`
	Error         *string       `json:"error"`
	Stack         string        `json:"stack"`
	Signaled      []string      `json:"signaled"`
	RttsMs        []float64     `json:"rtts_ms,omitempty"`
}

type envelope struct {
	Type    string          `json:"type"`
	Room    string          `json:"room,omitempty"`
	Members int             `json:"members,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	Error   string          `json:"error,omitempty"`
}

type peerMsg struct {
	Type      string          `json:"type"`
	SDP       string          `json:"sdp,omitempty"`
	Candidate json.RawMessage `json:"candidate,omitempty"`
}

type iceConfig struct {
	ICEServers []struct {
		URLs       json.RawMessage `json:"urls"`
		Username   string          `json:"username"`
		Credential string          `json:"credential"`
	} `json:"iceServers"`
	ICETransportPolicy string `json:"iceTransportPolicy"`
}

type failure struct{ msg string }

func (f failure) Error() string { return f.msg }

func logf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05.000")+" pion-peer: "+format+"\n", args...)
}

// -- signaling ------------------------------------------------------------------------------

type signaling struct {
	ws       *websocket.Conn
	mu       sync.Mutex
	incoming chan envelope
	closed   chan struct{}
	err      error
}

func dialSignaling(url string, deadline time.Time) (*signaling, error) {
	cfg, err := websocket.NewConfig(url, "http://natkit-lab-peer/")
	if err != nil {
		return nil, err
	}
	cfg.Dialer = &net.Dialer{Deadline: deadline, Timeout: 5 * time.Second}
	ws, err := websocket.DialConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the signaling server at %s: %v", url, err)
	}
	s := &signaling{ws: ws, incoming: make(chan envelope, 64), closed: make(chan struct{})}
	go s.read()
	return s, nil
}

func (s *signaling) read() {
	defer close(s.closed)
	for {
		var text string
		if err := websocket.Message.Receive(s.ws, &text); err != nil {
			s.err = err
			return
		}
		var msg envelope
		if json.Unmarshal([]byte(text), &msg) != nil {
			continue
		}
		s.incoming <- msg
	}
}

func (s *signaling) send(v interface{}) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return websocket.JSON.Send(s.ws, v)
}

func (s *signaling) relay(msg interface{}) error {
	data, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	return s.send(envelope{Type: "relay", Data: data})
}

// next returns the next message from the server, or a failure at the deadline or on close.
func (s *signaling) next(deadline time.Time, waitingFor string) (envelope, error) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case msg := <-s.incoming:
		if msg.Type == "error" {
			return msg, failure{"signaling server: " + msg.Error}
		}
		return msg, nil
	case <-s.closed:
		return envelope{}, failure{fmt.Sprintf("signaling connection closed while waiting for %s: %v", waitingFor, s.err)}
	case <-timer.C:
		return envelope{}, failure{"deadline reached while waiting for " + waitingFor}
	}
}

// -- the peer -------------------------------------------------------------------------------

type peer struct {
	role      string
	types     map[string]bool
	deadline  time.Time
	idle      time.Duration // longevity: NATKIT_IDLE_S of silence on the channel before a last echo
	sig       *signaling
	pc        *webrtc.PeerConnection
	remoteSet bool
	pending   []webrtc.ICECandidateInit
	res       *result
}

func candidateType(line string) string {
	fields := strings.Fields(line)
	for i := 0; i+1 < len(fields); i++ {
		if fields[i] == "typ" {
			return fields[i+1]
		}
	}
	return ""
}

// filterSDP keeps only the candidates of the path's types; it also returns those candidates.
func (p *peer) filterSDP(sdp string) (string, []string) {
	var out, kept []string
	for _, line := range strings.Split(strings.ReplaceAll(sdp, "\r\n", "\n"), "\n") {
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "a=candidate:") {
			if !p.types[candidateType(line)] {
				continue
			}
			kept = append(kept, line[2:])
		}
		out = append(out, line)
	}
	return strings.Join(out, "\r\n") + "\r\n", kept
}

// handle deals with a message other than the one awaited: trickled candidates, peer-left.
func (p *peer) handle(msg envelope, data peerMsg) error {
	if msg.Type == "peer-left" {
		return failure{"the other peer left the room"}
	}
	if msg.Type != "relay" || data.Type != "candidate" {
		return nil
	}
	if len(data.Candidate) == 0 || string(data.Candidate) == "null" {
		return nil // end of the other side's gathering
	}
	var init webrtc.ICECandidateInit
	if err := json.Unmarshal(data.Candidate, &init); err != nil || init.Candidate == "" {
		logf("ignoring a malformed trickled candidate: %s", string(data.Candidate))
		return nil
	}
	if !p.remoteSet {
		p.pending = append(p.pending, init)
		return nil
	}
	if err := p.pc.AddICECandidate(init); err != nil {
		logf("AddICECandidate(%q): %v", init.Candidate, err)
	}
	return nil
}

// await returns the next relayed message of kind, handling the others on the way.
func (p *peer) await(kind string) (peerMsg, error) {
	for {
		msg, err := p.sig.next(p.deadline, "'"+kind+"'")
		if err != nil {
			return peerMsg{}, err
		}
		var data peerMsg
		if msg.Type == "relay" {
			if json.Unmarshal(msg.Data, &data) != nil {
				continue
			}
			if data.Type == kind {
				return data, nil
			}
		}
		if err := p.handle(msg, data); err != nil {
			return peerMsg{}, err
		}
	}
}

func (p *peer) setRemote(kind webrtc.SDPType, sdp string) error {
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: kind, SDP: sdp}); err != nil {
		return fmt.Errorf("SetRemoteDescription(%s): %v", kind, err)
	}
	p.remoteSet = true
	for _, c := range p.pending {
		if err := p.pc.AddICECandidate(c); err != nil {
			logf("AddICECandidate(%q): %v", c.Candidate, err)
		}
	}
	p.pending = nil
	return nil
}

// gatherGrace is how long gathering may go on once a candidate of the path's type is there:
// the other servers' answers take milliseconds in the lab, and a server that cannot answer
// (TURN over UDP behind a UDP-blocking firewall) would hold the description until the limit.
const gatherGrace = 500 * time.Millisecond

// localDescription sets desc, waits for gathering (bounded: complete, or gatherGrace after the
// first candidate of the path's type) and returns the filtered SDP.
func (p *peer) localDescription(desc webrtc.SessionDescription) (string, error) {
	gathered := webrtc.GatheringCompletePromise(p.pc)
	wanted := make(chan struct{}, 1)
	p.pc.OnICECandidate(func(c *webrtc.ICECandidate) {
		if c != nil && p.types[c.Typ.String()] {
			select {
			case wanted <- struct{}{}:
			default:
			}
		}
	})
	if err := p.pc.SetLocalDescription(desc); err != nil {
		return "", fmt.Errorf("SetLocalDescription: %v", err)
	}
	limit := time.Until(p.deadline) / 2
	if limit > 5*time.Second {
		limit = 5 * time.Second
	}
	timeout := time.After(limit)
	select {
	case <-gathered:
	case <-wanted:
		select {
		case <-gathered:
		case <-time.After(gatherGrace):
			logf("gathering not complete %v after the first wanted candidate; sending what there is", gatherGrace)
		case <-timeout:
			logf("gathering not complete after %v; sending what there is", limit)
		}
	case <-timeout:
		logf("gathering not complete after %v; sending what there is", limit)
	}
	sdp, kept := p.filterSDP(p.pc.LocalDescription().SDP)
	p.res.Signaled = append(p.res.Signaled, kept...)
	logf("signaling %d candidate(s): %s", len(kept), strings.Join(kept, " | "))
	return sdp, nil
}

func (p *peer) waitOpen(opened chan struct{}) error {
	select {
	case <-opened:
		return nil
	case <-time.After(time.Until(p.deadline)):
		return failure{"not connected within the deadline (ICE state " + p.pc.ICEConnectionState().String() + ")"}
	}
}

func (p *peer) runCaller() error {
	// Wait until the room has both members.
	for members := 0; members < 2; {
		msg, err := p.sig.next(p.deadline, "the callee to join")
		if err != nil {
			return err
		}
		switch msg.Type {
		case "joined":
			members = msg.Members
		case "peer-joined":
			members = 2
		}
	}
	start := time.Now()
	ordered := true
	dc, err := p.pc.CreateDataChannel("echo", &webrtc.DataChannelInit{Ordered: &ordered})
	if err != nil {
		return err
	}
	opened := make(chan struct{})
	var once sync.Once
	dc.OnOpen(func() { once.Do(func() { close(opened) }) })
	echoes := make(chan string, 16)
	dc.OnMessage(func(m webrtc.DataChannelMessage) { echoes <- string(m.Data) })
	offer, err := p.pc.CreateOffer(nil)
	if err != nil {
		return err
	}
	sdp, err := p.localDescription(offer)
	if err != nil {
		return err
	}
	if err := p.sig.relay(peerMsg{Type: "offer", SDP: sdp}); err != nil {
		return err
	}
	answer, err := p.await("answer")
	if err != nil {
		return err
	}
	if err := p.setRemote(webrtc.SDPTypeAnswer, answer.SDP); err != nil {
		return err
	}
	if err := p.waitOpenHandling(opened); err != nil {
		return err
	}
	p.res.TConnectMs = ms(time.Since(start))
	p.readSelected()
	for n := 1; n <= 5; n++ {
		text := "ping " + strconv.Itoa(n)
		sent := time.Now()
		if err := dc.SendText(text); err != nil {
			return fmt.Errorf("send %q: %v", text, err)
		}
		for got := ""; got != text; {
			select {
			case got = <-echoes:
			case <-time.After(time.Until(p.deadline)):
				return failure{fmt.Sprintf("connected, but the echo of %q did not come back within the deadline", text)}
			}
		}
		p.res.RttsMs = append(p.res.RttsMs, *ms(time.Since(sent)))
	}
	p.res.RttMs = median(p.res.RttsMs)
	if p.idle > 0 {
		// longevity: nothing on the channel (only pion's keepalives on the pair), then one more echo.
		time.Sleep(p.idle)
		if err := dc.SendText(afterIdle); err != nil {
			return fmt.Errorf("send %q: %v", afterIdle, err)
		}
		for got := ""; got != afterIdle; {
			select {
			case got = <-echoes:
			case <-time.After(time.Until(p.deadline)):
				return failure{fmt.Sprintf("connected, but the echo after %v idle did not come back within the deadline", p.idle)}
			}
		}
	}
	p.res.Connected = true
	if err := p.sig.relay(peerMsg{Type: "done"}); err != nil {
		logf("sending done: %v", err)
		return nil
	}
	// The callee's bye ends the case; its absence does not fail it.
	byeBy := time.Now().Add(2 * time.Second)
	if byeBy.After(p.deadline) {
		byeBy = p.deadline
	}
	saved := p.deadline
	p.deadline = byeBy
	if _, err := p.await("bye"); err != nil {
		logf("no bye from the callee: %v", err)
	}
	p.deadline = saved
	return nil
}

// waitOpenHandling waits for the channel while still taking trickled candidates.
func (p *peer) waitOpenHandling(opened chan struct{}) error {
	for {
		select {
		case <-opened:
			return nil
		default:
		}
		timer := time.NewTimer(time.Until(p.deadline))
		select {
		case <-opened:
			timer.Stop()
			return nil
		case msg := <-p.sig.incoming:
			timer.Stop()
			var data peerMsg
			if msg.Type == "relay" {
				_ = json.Unmarshal(msg.Data, &data)
			}
			if err := p.handle(msg, data); err != nil {
				return err
			}
		case <-p.sig.closed:
			timer.Stop()
			return p.waitOpen(opened)
		case <-timer.C:
			return failure{"not connected within the deadline (ICE state " + p.pc.ICEConnectionState().String() + ")"}
		}
	}
}

func (p *peer) runCallee() error {
	opened := make(chan struct{})
	var once sync.Once
	p.pc.OnDataChannel(func(dc *webrtc.DataChannel) {
		dc.OnOpen(func() { once.Do(func() { close(opened) }) })
		dc.OnMessage(func(m webrtc.DataChannelMessage) {
			var err error
			if m.IsString {
				err = dc.SendText(string(m.Data))
			} else {
				err = dc.Send(m.Data)
			}
			if err != nil {
				logf("echo: %v", err)
			}
		})
	})
	offer, err := p.await("offer")
	if err != nil {
		return err
	}
	start := time.Now()
	if err := p.setRemote(webrtc.SDPTypeOffer, offer.SDP); err != nil {
		return err
	}
	answer, err := p.pc.CreateAnswer(nil)
	if err != nil {
		return err
	}
	sdp, err := p.localDescription(answer)
	if err != nil {
		return err
	}
	if err := p.sig.relay(peerMsg{Type: "answer", SDP: sdp}); err != nil {
		return err
	}
	if err := p.waitOpenHandling(opened); err != nil {
		return err
	}
	p.res.TConnectMs = ms(time.Since(start))
	p.readSelected()
	if _, err := p.await("done"); err != nil {
		return err
	}
	p.res.Connected = true
	if err := p.sig.relay(peerMsg{Type: "bye"}); err != nil {
		logf("sending bye: %v", err)
	}
	return nil
}

func info(c *webrtc.ICECandidate) candidateInfo {
	return candidateInfo{Type: c.Typ.String(), Address: c.Address, Port: int(c.Port), Protocol: c.Protocol.String()}
}

// readSelected records the pair pion's ICE transport selected, and from pion's stats the
// protocol its relay candidate speaks to the TURN server.
func (p *peer) readSelected() {
	sctp := p.pc.SCTP()
	if sctp == nil || sctp.Transport() == nil {
		return
	}
	pair, err := sctp.Transport().ICETransport().GetSelectedCandidatePair()
	if err != nil || pair == nil {
		logf("no selected pair: %v", err)
		return
	}
	sel := &selectedPair{Local: info(pair.Local), Remote: info(pair.Remote)}
	if pair.Local.Typ == webrtc.ICECandidateTypeRelay {
		for _, s := range p.pc.GetStats() {
			cs, ok := s.(webrtc.ICECandidateStats)
			if ok && cs.Type == webrtc.StatsTypeLocalCandidate && cs.IP == pair.Local.Address && int(cs.Port) == int(pair.Local.Port) && cs.RelayProtocol != "" {
				proto := cs.RelayProtocol
				sel.Local.RelayProtocol = &proto
				p.res.RelayProtocol = &proto
			}
		}
	}
	p.res.Selected = sel
}

func ms(d time.Duration) *float64 {
	v := float64(d.Microseconds()) / 1000
	return &v
}

func median(xs []float64) *float64 {
	if len(xs) == 0 {
		return nil
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return &m
}

func iceServers(cfg iceConfig) ([]webrtc.ICEServer, error) {
	var out []webrtc.ICEServer
	for i, s := range cfg.ICEServers {
		var urls []string
		var one string
		if json.Unmarshal(s.URLs, &one) == nil {
			urls = []string{one}
		} else if err := json.Unmarshal(s.URLs, &urls); err != nil {
			return nil, fmt.Errorf("iceServers[%d].urls: expected a string or a list of strings", i)
		}
		server := webrtc.ICEServer{URLs: urls}
		if s.Username != "" || s.Credential != "" {
			server.Username = s.Username
			server.Credential = s.Credential
			server.CredentialType = webrtc.ICECredentialTypePassword
		}
		out = append(out, server)
	}
	return out, nil
}

func env(name string) (string, error) {
	v := os.Getenv(name)
	if v == "" {
		return "", fmt.Errorf("%s is not set (run me through natkit's lab, see docs/lab-peers.md)", name)
	}
	return v, nil
}

func main() {
	showVersion := flag.Bool("version", false, "print the pion version and exit")
	flag.Parse()
	stack := "pion/webrtc " + pionVersion
	if *showVersion {
		fmt.Println(stack)
		return
	}
	started := time.Now()
	res := &result{NatkitPeer: contractVersion, Stack: stack, Signaled: []string{}}
	code := run(res, started)
	if res.Error != nil {
		logf("%s", *res.Error)
	}
	line, _ := json.Marshal(res)
	fmt.Println(string(line))
	os.Exit(code)
}

// run is the whole peer; its exit status: 0 connected, 1 failed, 2 bad environment.
func run(res *result, started time.Time) int {
	fail := func(err error) int {
		text := strings.Join(strings.Fields(err.Error()), " ")
		res.Error = &text
		return 1
	}
	bad := func(err error) int {
		fail(err)
		return 2
	}
	if v := os.Getenv("NATKIT_PEER_CONTRACT"); v != strconv.Itoa(contractVersion) {
		return bad(fmt.Errorf("NATKIT_PEER_CONTRACT is %q; this peer implements version %d", v, contractVersion))
	}
	vars := map[string]string{}
	for _, name := range []string{"NATKIT_ROLE", "NATKIT_SIGNALING_URL", "NATKIT_ROOM", "NATKIT_ICE_CONFIG", "NATKIT_CANDIDATE_TYPES", "NATKIT_DEADLINE_S"} {
		v, err := env(name)
		if err != nil {
			return bad(err)
		}
		vars[name] = v
	}
	role := vars["NATKIT_ROLE"]
	if role != "caller" && role != "callee" {
		return bad(fmt.Errorf("NATKIT_ROLE is %q; expected caller or callee", role))
	}
	seconds, err := strconv.ParseFloat(vars["NATKIT_DEADLINE_S"], 64)
	if err != nil || seconds <= 0 {
		return bad(fmt.Errorf("NATKIT_DEADLINE_S is %q; expected a positive number", vars["NATKIT_DEADLINE_S"]))
	}
	var idle time.Duration
	if v := os.Getenv("NATKIT_IDLE_S"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 {
			return bad(fmt.Errorf("NATKIT_IDLE_S is %q; expected a number of seconds >= 0", v))
		}
		idle = time.Duration(f * float64(time.Second))
	}
	// Leave a moment to close and report inside the deadline.
	deadline := started.Add(time.Duration(seconds*float64(time.Second)) - 500*time.Millisecond)
	var cfg iceConfig
	if err := json.Unmarshal([]byte(vars["NATKIT_ICE_CONFIG"]), &cfg); err != nil {
		return bad(fmt.Errorf("NATKIT_ICE_CONFIG is not an RTCConfiguration: %v", err))
	}
	servers, err := iceServers(cfg)
	if err != nil {
		return bad(err)
	}
	types := map[string]bool{}
	for _, t := range strings.Split(vars["NATKIT_CANDIDATE_TYPES"], ",") {
		types[strings.TrimSpace(t)] = true
	}
	policy := webrtc.ICETransportPolicyAll
	if cfg.ICETransportPolicy == "relay" {
		policy = webrtc.ICETransportPolicyRelay
	}
	logf("%s as %s in room %s, candidate types %s, %d ICE server(s), policy %s", res.Stack, role, vars["NATKIT_ROOM"], vars["NATKIT_CANDIDATE_TYPES"], len(servers), policy)

	sig, err := dialSignaling(vars["NATKIT_SIGNALING_URL"], deadline)
	if err != nil {
		return fail(err)
	}
	defer sig.ws.Close()
	if err := sig.send(envelope{Type: "join", Room: vars["NATKIT_ROOM"]}); err != nil {
		return fail(err)
	}

	settings := webrtc.SettingEngine{}
	settings.SetIncludeLoopbackCandidate(false)
	api := webrtc.NewAPI(webrtc.WithSettingEngine(settings))
	pc, err := api.NewPeerConnection(webrtc.Configuration{ICEServers: servers, ICETransportPolicy: policy})
	if err != nil {
		return fail(fmt.Errorf("NewPeerConnection: %v", err))
	}
	defer func() {
		closed := make(chan struct{})
		go func() { _ = pc.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(2 * time.Second):
			logf("PeerConnection.Close did not return within 2 s")
		}
	}()
	pc.OnICEConnectionStateChange(func(s webrtc.ICEConnectionState) { logf("ICE %s", s) })

	p := &peer{role: role, types: types, deadline: deadline, idle: idle, sig: sig, pc: pc, res: res}
	if role == "caller" {
		err = p.runCaller()
	} else {
		err = p.runCallee()
	}
	if res.Selected == nil && res.TConnectMs != nil {
		p.readSelected()
	}
	_ = sig.send(envelope{Type: "leave"})
	if err != nil {
		var f failure
		if !errors.As(err, &f) {
			err = fmt.Errorf("%v", err)
		}
		res.Connected = false
		return fail(err)
	}
	if !res.Connected {
		return fail(errors.New("not connected"))
	}
	return 0
}

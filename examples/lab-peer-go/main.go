// A lab peer in Go, written from docs/lab-peers.md alone (contract version 1), on
// pion/webrtc v3 and golang.org/x/net/websocket. It does not use natkit.
//
// Build it (Debian: golang-go, golang-github-pion-webrtc.v3-dev, golang-golang-x-net-dev),
// e.g. in GOPATH mode with the Debian sources, then:
//
//	natkit lab run --peer gopeer=./lab-peer-go
//
// Candidates travel inside the SDP (it gathers first, then sends); trickled candidates from
// the other side are accepted, before or after the description they belong to.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pion/webrtc/v3"
	"golang.org/x/net/websocket"
)

const contract = "1"

type result struct {
	NatkitPeer    int       `json:"natkit_peer"`
	Connected     bool      `json:"connected"`
	TConnectMs    *float64  `json:"t_connect_ms"`
	RttMs         *float64  `json:"rtt_ms"`
	Selected      *selected `json:"selected"`
	RelayProtocol *string   `json:"relay_protocol"`
	Error         *string   `json:"error"`
	Stack         string    `json:"stack"`
}

type endpoint struct {
	Type     string `json:"type"`
	Address  string `json:"address"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
}

type selected struct {
	Local  endpoint `json:"local"`
	Remote endpoint `json:"remote"`
}

type peer struct {
	role     string
	room     string
	types    map[string]bool
	deadline time.Time
	ws       *websocket.Conn
	inbox    chan map[string]any
	pc       *webrtc.PeerConnection
	pending  []webrtc.ICECandidateInit
	remote   bool
	res      result
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s go-peer: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func finish(p *peer, code int, why string) {
	if why != "" {
		p.res.Error = &why
		logf("%s", why)
	}
	p.res.Connected = code == 0
	line, _ := json.Marshal(p.res)
	fmt.Println(string(line))
	os.Exit(code)
}

func (p *peer) send(msg map[string]any) error {
	data, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	return websocket.Message.Send(p.ws, string(data))
}

func (p *peer) relay(data map[string]any) error {
	return p.send(map[string]any{"type": "relay", "data": data})
}

// next is the next message from the server within the deadline (nil: the deadline passed).
func (p *peer) next() map[string]any {
	select {
	case m, ok := <-p.inbox:
		if !ok {
			return map[string]any{"type": "peer-left"}
		}
		return m
	case <-time.After(time.Until(p.deadline)):
		return nil
	}
}

// await returns the next relayed message of the given type, handling candidates on the way.
func (p *peer) await(kind string) (map[string]any, string) {
	for {
		m := p.next()
		if m == nil {
			return nil, "no " + kind + " before the deadline"
		}
		switch m["type"] {
		case "peer-left":
			return nil, "the other peer left before " + kind
		case "relay":
			data, _ := m["data"].(map[string]any)
			if data == nil {
				continue
			}
			if data["type"] == "candidate" {
				p.candidate(data["candidate"])
				continue
			}
			if data["type"] == kind {
				return data, ""
			}
		}
	}
}

func (p *peer) candidate(raw any) {
	c, _ := raw.(map[string]any)
	if c == nil {
		return // null: the end of the other side's candidates
	}
	text, _ := c["candidate"].(string)
	if text == "" {
		return
	}
	init := webrtc.ICECandidateInit{Candidate: strings.TrimPrefix(text, "a=")}
	if mid, ok := c["sdpMid"].(string); ok {
		init.SDPMid = &mid
	}
	if idx, ok := c["sdpMLineIndex"].(float64); ok {
		i := uint16(idx)
		init.SDPMLineIndex = &i
	}
	if !p.remote {
		p.pending = append(p.pending, init)
		return
	}
	if err := p.pc.AddICECandidate(init); err != nil {
		logf("remote candidate refused: %v", err)
	}
}

func (p *peer) applyRemote(kind webrtc.SDPType, sdp string) error {
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: kind, SDP: sdp}); err != nil {
		return err
	}
	p.remote = true
	for _, c := range p.pending {
		if err := p.pc.AddICECandidate(c); err != nil {
			logf("remote candidate refused: %v", err)
		}
	}
	p.pending = nil
	return nil
}

// filtered is the local description with only the candidate types the path signals.
func (p *peer) filtered() string {
	var out []string
	for _, line := range strings.Split(p.pc.LocalDescription().SDP, "\r\n") {
		if strings.HasPrefix(line, "a=candidate:") {
			fields := strings.Fields(line)
			keep := false
			for i := 0; i+1 < len(fields); i++ {
				if fields[i] == "typ" && p.types[fields[i+1]] {
					keep = true
				}
			}
			if !keep {
				continue
			}
		}
		out = append(out, line)
	}
	return strings.Join(out, "\r\n")
}

// gathered waits for the end of gathering, or 1.5 s after the first candidate of a type the
// path signals (a TURN allocation over a transport that is blocked only ends by timing out).
func (p *peer) gathered(wanted <-chan struct{}) string {
	complete := webrtc.GatheringCompletePromise(p.pc)
	select {
	case <-complete:
		return ""
	case <-wanted:
	case <-time.After(time.Until(p.deadline)):
		return "gathering did not complete before the deadline"
	}
	select {
	case <-complete:
	case <-time.After(1500 * time.Millisecond):
	}
	return ""
}

// watch closes the returned channel at the first gathered candidate of a wanted type.
func (p *peer) watch() <-chan struct{} {
	wanted := make(chan struct{})
	var once sync.Once
	p.pc.OnICECandidate(func(c *webrtc.ICECandidate) {
		if c != nil && p.types[c.Typ.String()] {
			once.Do(func() { close(wanted) })
		}
	})
	return wanted
}

func (p *peer) report() {
	pair, err := p.pc.SCTP().Transport().ICETransport().GetSelectedCandidatePair()
	if err != nil || pair == nil {
		return
	}
	p.res.Selected = &selected{
		Local:  endpoint{pair.Local.Typ.String(), pair.Local.Address, int(pair.Local.Port), pair.Local.Protocol.String()},
		Remote: endpoint{pair.Remote.Typ.String(), pair.Remote.Address, int(pair.Remote.Port), pair.Remote.Protocol.String()},
	}
	if pair.Local.Typ != webrtc.ICECandidateTypeRelay {
		return
	}
	for _, s := range p.pc.GetStats() {
		if c, ok := s.(webrtc.ICECandidateStats); ok && c.Type == webrtc.StatsTypeLocalCandidate &&
			c.IP == pair.Local.Address && int(c.Port) == int(pair.Local.Port) && c.RelayProtocol != "" {
			proto := c.RelayProtocol
			p.res.RelayProtocol = &proto
		}
	}
}

func ms(d time.Duration) *float64 {
	v := float64(d.Microseconds()) / 1000
	return &v
}

func main() {
	if os.Getenv("NATKIT_PEER_CONTRACT") != contract {
		fmt.Fprintf(os.Stderr, "go-peer: this peer implements contract version %s, not %q\n", contract, os.Getenv("NATKIT_PEER_CONTRACT"))
		os.Exit(2)
	}
	seconds, err := strconv.ParseFloat(os.Getenv("NATKIT_DEADLINE_S"), 64)
	role := os.Getenv("NATKIT_ROLE")
	if err != nil || (role != "caller" && role != "callee") {
		fmt.Fprintln(os.Stderr, "go-peer: NATKIT_DEADLINE_S or NATKIT_ROLE is not what docs/lab-peers.md says")
		os.Exit(2)
	}
	p := &peer{role: role, room: os.Getenv("NATKIT_ROOM"), types: map[string]bool{},
		deadline: time.Now().Add(time.Duration((seconds - 0.5) * float64(time.Second))),
		inbox:    make(chan map[string]any, 64),
		res:      result{NatkitPeer: 1, Stack: "go-peer (pion/webrtc v3)"}}
	for _, t := range strings.Split(os.Getenv("NATKIT_CANDIDATE_TYPES"), ",") {
		p.types[strings.TrimSpace(t)] = true
	}
	// A watchdog: whatever happens, out by the deadline with a result line.
	time.AfterFunc(time.Until(p.deadline)+300*time.Millisecond, func() { finish(p, 1, "deadline passed") })

	var ice struct {
		IceServers []struct {
			URLs       any    `json:"urls"`
			Username   string `json:"username"`
			Credential string `json:"credential"`
		} `json:"iceServers"`
		Policy string `json:"iceTransportPolicy"`
	}
	if err := json.Unmarshal([]byte(os.Getenv("NATKIT_ICE_CONFIG")), &ice); err != nil {
		fmt.Fprintf(os.Stderr, "go-peer: NATKIT_ICE_CONFIG is not JSON: %v\n", err)
		os.Exit(2)
	}
	config := webrtc.Configuration{}
	for _, s := range ice.IceServers {
		var urls []string
		switch u := s.URLs.(type) {
		case string:
			urls = []string{u}
		case []any:
			for _, x := range u {
				if str, ok := x.(string); ok {
					urls = append(urls, str)
				}
			}
		}
		server := webrtc.ICEServer{URLs: urls}
		if s.Username != "" {
			server.Username, server.Credential = s.Username, s.Credential
		}
		config.ICEServers = append(config.ICEServers, server)
	}
	if ice.Policy == "relay" {
		config.ICETransportPolicy = webrtc.ICETransportPolicyRelay
	}
	logf("%s in room %s, candidate types %s, policy %s", role, p.room, os.Getenv("NATKIT_CANDIDATE_TYPES"), ice.Policy)

	wsConfig, err := websocket.NewConfig(os.Getenv("NATKIT_SIGNALING_URL"), "http://lab-peer-go/")
	if err != nil {
		finish(p, 1, "bad signaling URL: "+err.Error())
	}
	if p.ws, err = websocket.DialConfig(wsConfig); err != nil {
		finish(p, 1, "signaling: "+err.Error())
	}
	go func() {
		for {
			var text string
			if err := websocket.Message.Receive(p.ws, &text); err != nil {
				close(p.inbox)
				return
			}
			var m map[string]any
			if json.Unmarshal([]byte(text), &m) == nil {
				p.inbox <- m
			}
		}
	}()
	if p.pc, err = webrtc.NewPeerConnection(config); err != nil {
		finish(p, 1, "peer connection: "+err.Error())
	}
	defer p.pc.Close()
	if err := p.send(map[string]any{"type": "join", "room": p.room}); err != nil {
		finish(p, 1, "join: "+err.Error())
	}
	two := false
	for !two {
		m := p.next()
		if m == nil {
			finish(p, 1, "the other peer never joined")
		}
		switch m["type"] {
		case "joined":
			n, _ := m["members"].(float64)
			two = n >= 2 || role == "callee"
		case "peer-joined":
			two = true
		case "error":
			finish(p, 1, fmt.Sprintf("signaling error: %v", m["error"]))
		}
	}
	if role == "caller" {
		caller(p)
	} else {
		callee(p)
	}
}

func caller(p *peer) {
	start := time.Now()
	ordered := true
	dc, err := p.pc.CreateDataChannel("echo", &webrtc.DataChannelInit{Ordered: &ordered})
	if err != nil {
		finish(p, 1, "data channel: "+err.Error())
	}
	open := make(chan struct{})
	echoes := make(chan string, 16)
	dc.OnOpen(func() { close(open) })
	dc.OnMessage(func(m webrtc.DataChannelMessage) { echoes <- string(m.Data) })
	wanted := p.watch()
	offer, err := p.pc.CreateOffer(nil)
	if err == nil {
		err = p.pc.SetLocalDescription(offer)
	}
	if err != nil {
		finish(p, 1, "offer: "+err.Error())
	}
	if why := p.gathered(wanted); why != "" {
		finish(p, 1, why)
	}
	if err := p.relay(map[string]any{"type": "offer", "sdp": p.filtered()}); err != nil {
		finish(p, 1, "sending the offer: "+err.Error())
	}
	answer, why := p.await("answer")
	if why != "" {
		finish(p, 1, why)
	}
	sdp, _ := answer["sdp"].(string)
	if err := p.applyRemote(webrtc.SDPTypeAnswer, sdp); err != nil {
		finish(p, 1, "answer: "+err.Error())
	}
	bye, left := make(chan struct{}), make(chan struct{})
	go func() { // candidates may still come; a peer-left before the echo is done fails the case
		for m := range p.inbox {
			data, _ := m["data"].(map[string]any)
			switch {
			case m["type"] == "peer-left":
				close(left)
				return
			case data != nil && data["type"] == "candidate":
				p.candidate(data["candidate"])
			case data != nil && data["type"] == "bye":
				close(bye)
				return
			}
		}
		close(left)
	}()
	select {
	case <-open:
	case <-left:
		finish(p, 1, "the other peer left before the data channel opened")
	case <-time.After(time.Until(p.deadline)):
		finish(p, 1, "the data channel did not open before the deadline")
	}
	p.res.TConnectMs = ms(time.Since(start))
	var rtts []float64
	for i := 1; i <= 5; i++ {
		text := fmt.Sprintf("ping %d", i)
		sent := time.Now()
		if err := dc.SendText(text); err != nil {
			finish(p, 1, "send: "+err.Error())
		}
		for got := ""; got != text; {
			select {
			case got = <-echoes:
			case <-left:
				finish(p, 1, "the other peer left before the echo of "+text)
			case <-time.After(time.Until(p.deadline)):
				finish(p, 1, "no echo of "+text+" before the deadline")
			}
		}
		rtts = append(rtts, float64(time.Since(sent).Microseconds())/1000)
	}
	sort.Float64s(rtts)
	p.res.RttMs = &rtts[len(rtts)/2]
	// The longevity path: silence on the channel for NATKIT_IDLE_S, then one more echo.
	if idle, _ := strconv.ParseFloat(os.Getenv("NATKIT_IDLE_S"), 64); idle > 0 {
		select {
		case <-left:
			finish(p, 1, "the other peer left while idle")
		case <-time.After(time.Duration(idle * float64(time.Second))):
		}
		if err := dc.SendText("after idle"); err != nil {
			finish(p, 1, "send: "+err.Error())
		}
		for got := ""; got != "after idle"; {
			select {
			case got = <-echoes:
			case <-left:
				finish(p, 1, "the other peer left before the echo after the idle period")
			case <-time.After(time.Until(p.deadline)):
				finish(p, 1, "no echo after the idle period before the deadline")
			}
		}
	}
	p.report()
	_ = p.relay(map[string]any{"type": "done"})
	select { // the callee's bye, for at most 2 s: its absence does not fail the case
	case <-bye:
	case <-left:
	case <-time.After(2 * time.Second):
	}
	finish(p, 0, "")
}

func callee(p *peer) {
	offer, why := p.await("offer")
	if why != "" {
		finish(p, 1, why)
	}
	start := time.Now()
	open := make(chan struct{})
	p.pc.OnDataChannel(func(dc *webrtc.DataChannel) {
		dc.OnOpen(func() { close(open) })
		dc.OnMessage(func(m webrtc.DataChannelMessage) {
			if m.IsString {
				_ = dc.SendText(string(m.Data))
			} else {
				_ = dc.Send(m.Data)
			}
		})
	})
	sdp, _ := offer["sdp"].(string)
	if err := p.applyRemote(webrtc.SDPTypeOffer, sdp); err != nil {
		finish(p, 1, "offer: "+err.Error())
	}
	wanted := p.watch()
	answer, err := p.pc.CreateAnswer(nil)
	if err == nil {
		err = p.pc.SetLocalDescription(answer)
	}
	if err != nil {
		finish(p, 1, "answer: "+err.Error())
	}
	if why := p.gathered(wanted); why != "" {
		finish(p, 1, why)
	}
	if err := p.relay(map[string]any{"type": "answer", "sdp": p.filtered()}); err != nil {
		finish(p, 1, "sending the answer: "+err.Error())
	}
	go func() {
		select {
		case <-open:
			p.res.TConnectMs = ms(time.Since(start))
			p.report()
		case <-time.After(time.Until(p.deadline)):
		}
	}()
	if _, why := p.await("done"); why != "" {
		finish(p, 1, why)
	}
	_ = p.relay(map[string]any{"type": "bye"})
	if p.res.TConnectMs == nil {
		p.report()
	}
	finish(p, 0, "")
}

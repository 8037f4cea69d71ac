package mta

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"sync/atomic"
	"time"
)

// Reply is one SMTP reply.
type Reply struct {
	Code int
	Text string // the lines after the code, joined with "\n"
}

func (r Reply) String() string {
	return fmt.Sprintf("%d %s", r.Code, strings.ReplaceAll(r.Text, "\n", " / "))
}

// OK reports a 2xx or 3xx reply.
func (r Reply) OK() bool { return r.Code >= 200 && r.Code < 400 }

// Temp reports a 4xx reply.
func (r Reply) Temp() bool { return r.Code >= 400 && r.Code < 500 }

// Client is a small SMTP client for tests: every command returns the
// server's reply, whatever its code, so a test can assert on refusals.
// The connection stays open until Quit or Close, which concurrency tests
// rely on. A Client is not safe for concurrent use.
type Client struct {
	Greeting Reply
	Timeout  time.Duration // per command; 30s by default

	conn net.Conn
	text *textproto.Conn
}

// Dial connects to an SMTP server at addr (host:port) and reads its
// greeting. A refusal in the greeting (421, 554) is not an error: it is
// in Greeting.
func Dial(addr string) (*Client, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return greeted(conn, addr)
}

// greeted makes a Client of a new connection and reads the greeting.
func greeted(conn net.Conn, addr string) (*Client, error) {
	c := &Client{conn: conn, text: textproto.NewConn(conn), Timeout: 30 * time.Second}
	var err error
	c.Greeting, err = c.read()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting from %s: %v", addr, err)
	}
	return c, nil
}

func (c *Client) read() (Reply, error) {
	c.conn.SetDeadline(time.Now().Add(c.Timeout))
	code, msg, err := c.text.ReadResponse(0)
	if code == 0 && err != nil {
		return Reply{}, err
	}
	// ReadResponse reports a reply of an unexpected class as an error;
	// here every reply is an answer.
	return Reply{Code: code, Text: msg}, nil
}

// Cmd sends one command line and returns the reply.
func (c *Client) Cmd(format string, args ...any) (Reply, error) {
	c.conn.SetDeadline(time.Now().Add(c.Timeout))
	if err := c.text.PrintfLine(format, args...); err != nil {
		return Reply{}, err
	}
	r, err := c.read()
	if err != nil {
		return r, fmt.Errorf("%s: %v", strings.Fields(fmt.Sprintf(format, args...) + " ?")[0], err)
	}
	return r, nil
}

// Ehlo sends EHLO name.
func (c *Client) Ehlo(name string) (Reply, error) { return c.Cmd("EHLO %s", name) }

// XClient sends XCLIENT with attributes such as "ADDR=192.0.2.7
// NAME=client.example". Postfix answers with a fresh greeting (or a
// refusal from the milter's connect stage); send EHLO again afterwards.
func (c *Client) XClient(attrs string) (Reply, error) { return c.Cmd("XCLIENT %s", attrs) }

// AuthPlain authenticates with AUTH PLAIN.
func (c *Client) AuthPlain(user, pass string) (Reply, error) {
	resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	return c.Cmd("AUTH PLAIN %s", resp)
}

// Mail sends MAIL FROM:<from>.
func (c *Client) Mail(from string) (Reply, error) { return c.Cmd("MAIL FROM:<%s>", from) }

// Rcpt sends RCPT TO:<to>.
func (c *Client) Rcpt(to string) (Reply, error) { return c.Cmd("RCPT TO:<%s>", to) }

// Data sends DATA and, when the server says go ahead, the message
// (dot-stuffed, ended with "."). It returns the final reply, or the
// refusal of DATA itself.
func (c *Client) Data(msg []byte) (Reply, error) {
	r, err := c.Cmd("DATA")
	if err != nil || r.Code != 354 {
		return r, err
	}
	c.conn.SetDeadline(time.Now().Add(c.Timeout))
	w := c.text.DotWriter()
	if _, err := w.Write(msg); err != nil {
		return Reply{}, err
	}
	if err := w.Close(); err != nil {
		return Reply{}, err
	}
	return c.read()
}

// Rset sends RSET.
func (c *Client) Rset() (Reply, error) { return c.Cmd("RSET") }

// Quit sends QUIT and closes the connection.
func (c *Client) Quit() error {
	_, err := c.Cmd("QUIT")
	c.Close()
	return err
}

// Close closes the connection without QUIT.
func (c *Client) Close() error { return c.conn.Close() }

// Transaction is the replies to one mail transaction.
type Transaction struct {
	Mail Reply
	Rcpt []Reply
	Data Reply // the final reply after the message, or the refusal of DATA
}

// Accepted reports whether the message was accepted for delivery.
func (tr Transaction) Accepted() bool { return tr.Data.Code == 250 }

// Refused returns the first refusal of the transaction and the stage it
// came at ("MAIL", "RCPT", "DATA"), or "" when there was none.
func (tr Transaction) Refused() (string, Reply) {
	if !tr.Mail.OK() {
		return "MAIL", tr.Mail
	}
	for _, r := range tr.Rcpt {
		if !r.OK() {
			return "RCPT", r
		}
	}
	if tr.Data.Code != 0 && tr.Data.Code != 250 {
		return "DATA", tr.Data
	}
	return "", Reply{}
}

// QueueID is the queue id the MTA gave an accepted message, read from its
// reply to the end of data ("250 2.0.0 Ok: queued as ID" from Postfix,
// "250 2.0.0 ID Message accepted for delivery" from Sendmail); "" when
// the message was not accepted or the reply names none.
func (tr Transaction) QueueID() string {
	if !tr.Accepted() {
		return ""
	}
	if _, after, ok := strings.Cut(tr.Data.Text, "queued as "); ok {
		if f := strings.Fields(after); len(f) > 0 {
			return f[0]
		}
	}
	if f := strings.Fields(tr.Data.Text); len(f) >= 3 && strings.HasPrefix(f[2], "Message") {
		return f[1]
	}
	return ""
}

func (tr Transaction) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "MAIL: %v", tr.Mail)
	for _, r := range tr.Rcpt {
		fmt.Fprintf(&b, "; RCPT: %v", r)
	}
	if tr.Data.Code != 0 {
		fmt.Fprintf(&b, "; DATA: %v", tr.Data)
	}
	return b.String()
}

// Send runs one mail transaction: MAIL, every RCPT, DATA. It stops at a
// refused MAIL or when no recipient is accepted, and then sends RSET so
// that the connection can carry the next message. A 421 leaves the
// connection closed by the server; the next command gets an error.
func (c *Client) Send(from string, to []string, msg []byte) (Transaction, error) {
	var tr Transaction
	var err error
	if tr.Mail, err = c.Mail(from); err != nil {
		return tr, err
	}
	if !tr.Mail.OK() {
		return tr, c.rsetUnless421(tr.Mail)
	}
	accepted := 0
	for _, rcpt := range to {
		r, err := c.Rcpt(rcpt)
		if err != nil {
			return tr, err
		}
		tr.Rcpt = append(tr.Rcpt, r)
		if r.Code == 421 {
			return tr, nil
		}
		if r.OK() {
			accepted++
		}
	}
	if accepted == 0 {
		return tr, c.rsetUnless421(Reply{})
	}
	if tr.Data, err = c.Data(msg); err != nil {
		return tr, err
	}
	return tr, nil
}

func (c *Client) rsetUnless421(r Reply) error {
	if r.Code == 421 {
		return nil
	}
	_, err := c.Rset()
	return err
}

var msgSeq atomic.Int64

// NewMessage builds a small RFC 5322 message with a unique Message-ID.
// extra holds more header lines ("Name: value"), written as given.
func NewMessage(from, to, subject string, extra ...string) []byte {
	var b bytes.Buffer
	n := msgSeq.Add(1)
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n", from, to, subject)
	fmt.Fprintf(&b, "Date: %s\r\n", time.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Message-ID: <%d.%d@sluice.test>\r\n", time.Now().UnixNano(), n)
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&b, "\r\nTest message %d.\r\n", n)
	return b.Bytes()
}

// DialFrom is Dial from the local address from (an IP on loopback such
// as 127.0.0.7), so that one machine can pose as several clients to an
// MTA without XCLIENT (Sendmail).
func DialFrom(addr, from string) (*Client, error) {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return greeted(conn, addr)
}

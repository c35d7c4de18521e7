package mailer

import "go.uber.org/fx"

// Module provides the *Client and closes its kept-alive connections on stop.
var Module = fx.Module("mailer",
	fx.Provide(New),
	fx.Invoke(func(lc fx.Lifecycle, c *Client) { lc.Append(fx.StopHook(c.CloseIdleConnections)) }),
)

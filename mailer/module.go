package mailer

import "go.uber.org/fx"

// Module provides the *Client.
var Module = fx.Module("mailer", fx.Provide(New))

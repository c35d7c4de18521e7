package metrics

import "go.uber.org/fx"

// Module provides the *Server and runs it with the app.
var Module = fx.Module("metrics",
	fx.Provide(New),
	fx.Invoke(func(lc fx.Lifecycle, s *Server) {
		lc.Append(fx.Hook{OnStart: s.Start, OnStop: s.Stop})
	}),
)

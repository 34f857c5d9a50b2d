package driver

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// logCalls returns a unary interceptor that logs every call with its method, request (secrets
// replaced by protosanitizer), gRPC code, latency and, on failure, the error:
//
//   - successful polling calls (Probe, Get*Capabilities, GetPluginInfo, GetCapacity, Node
//     info) at Debug, other successes at Info;
//   - errors the caller caused (InvalidArgument, NotFound, AlreadyExists, Aborted, ...) at
//     Warn; Internal, Unknown, Unavailable and DataLoss at Error.
//
// Responses are logged at Debug (secrets stripped too).
func logCalls(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		code := status.Code(err)
		level := slog.LevelInfo
		switch {
		case err == nil && polled(info.FullMethod):
			level = slog.LevelDebug
		case code == codes.Internal || code == codes.Unknown || code == codes.Unavailable || code == codes.DataLoss:
			level = slog.LevelError
		case err != nil:
			level = slog.LevelWarn
		}
		if !log.Enabled(ctx, level) {
			return resp, err
		}
		attrs := []slog.Attr{
			slog.String("method", info.FullMethod),
			slog.String("code", code.String()),
			slog.Duration("latency", time.Since(start)),
			slog.String("request", protosanitizer.StripSecrets(req).String()),
		}
		if err != nil {
			attrs = append(attrs, slog.String("err", status.Convert(err).Message()))
		} else if log.Enabled(ctx, slog.LevelDebug) {
			attrs = append(attrs, slog.String("response", protosanitizer.StripSecrets(resp).String()))
		}
		log.LogAttrs(ctx, level, "csi call", attrs...)
		return resp, err
	}
}

// polled reports whether a method is one the sidecars and kubelet call periodically.
func polled(method string) bool {
	i := strings.LastIndexByte(method, '/')
	switch method[i+1:] {
	case "Probe", "GetPluginInfo", "GetPluginCapabilities", "ControllerGetCapabilities",
		"NodeGetCapabilities", "NodeGetInfo", "GetCapacity":
		return true
	}
	return false
}

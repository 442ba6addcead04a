package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald"
)

// runPublish is "worker publish": one effect-complete event, its event ids
// printed one per line.
func runPublish(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	rf := addRedisFlags(fs)
	pf := addPublishFlags(fs)
	user := fs.String("user", "", "user id; the event also goes to user:{user}")
	effect := fs.String("effect", "", "userEffectId (required); the event goes to effect:{effect}")
	resultURL := fs.String("url", "", "result URL (required)")
	idemKey := fs.String("idempotency-key", "", "publish at most once per key within the history window")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if *effect == "" || *resultURL == "" {
		return fmt.Errorf("%w: publish: --effect and --url are required", errUsage)
	}
	if err := rf.resolve(getenv); err != nil {
		return err
	}
	var rdb *redis.Client
	if pf.gateway == "" {
		var err error
		if rdb, err = rf.client(ctx); err != nil {
			return err
		}
		defer rdb.Close()
	}
	pub, _, err := publisher(rf, pf, getenv, rdb)
	if err != nil {
		return err
	}

	var opts []herald.PublishOption
	if *idemKey != "" {
		opts = append(opts, herald.IdempotencyKey(*idemKey))
	}
	ids, err := herald.PublishEffectComplete(ctx, pub, herald.EffectComplete{
		UserID:       *user,
		UserEffectID: *effect,
		ResultURL:    *resultURL,
	}, opts...)
	if err != nil {
		return err
	}
	for _, id := range ids {
		fmt.Fprintln(stdout, id)
	}
	return nil
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald"
	"github.com/heraldgw/herald/internal/events"
)

// runPublish is "worker publish": one effect-complete event, its event ids
// printed one per line.
func runPublish(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	rf := addRedisFlags(fs)
	pf := addPublishFlags(fs)
	user := fs.String("user", "", "user id; the event also goes to user:{user}")
	effect := fs.String("effect", "", "userEffectId (required), typically a UUID; the event goes to effect:{effect}")
	resultURL := fs.String("url", "", "result URL (required): http(s)://… or a path on the page's origin such as /results/x.png")
	kind := fs.String("kind", "", "the effect's name (blur, render, …), shown by the demo page; optional")
	idemKey := fs.String("idempotency-key", "", "publish at most once per key within the history window")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if *effect == "" || *resultURL == "" {
		return fmt.Errorf("%w: publish: --effect and --url are required", errUsage)
	}
	if err := checkPublishFlags(*effect, *user, *resultURL); err != nil {
		return fmt.Errorf("%w: publish: %v", errUsage, err)
	}
	if err := rf.resolve(getenv); err != nil {
		return err
	}
	var rdb redis.UniversalClient
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
		Kind:         *kind,
	}, opts...)
	if err != nil {
		return err
	}
	for _, id := range ids {
		fmt.Fprintln(stdout, id)
	}
	return nil
}

// checkPublishFlags checks publish's ids and URL before anything is sent,
// saying which flag is wrong and what it wants.
func checkPublishFlags(effect, user, resultURL string) error {
	if _, _, err := events.ParseChannel(events.EffectChannel(effect)); err != nil {
		return fmt.Errorf("--effect %q: not usable in a channel name: only letters, digits and :_.-, at most %d characters (a UUID is best: it is a capability)", effect, events.MaxNameLen-len("effect:"))
	}
	if user != "" {
		if _, _, err := events.ParseChannel(events.UserChannel(user)); err != nil {
			return fmt.Errorf("--user %q: not usable in a channel name: only letters, digits and :_.-, at most %d characters", user, events.MaxNameLen-len("user:"))
		}
	}
	u, err := url.Parse(resultURL)
	switch {
	case err != nil:
		return fmt.Errorf("--url %q: %v", resultURL, err)
	case u.Scheme == "" && u.Host == "" && strings.HasPrefix(u.Path, "/"):
		return nil // a path on the page's origin, as the demo's /dev/results/{id}.svg
	case (u.Scheme == "http" || u.Scheme == "https") && u.Host != "":
		return nil
	}
	return fmt.Errorf("--url %q: want an http(s) URL, such as https://cdn.example/results/e1.png, or a path such as /results/e1.png", resultURL)
}

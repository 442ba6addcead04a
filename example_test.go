package herald_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/heraldgw/herald"
)

// exampleGateway stands in for a Herald gateway in the examples: it accepts
// the publish API and answers with made-up event ids, printing what it got.
func exampleGateway() *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Printf("gateway got %s %s key=%q\n%s", r.Method, r.URL.Path, r.Header.Get("Idempotency-Key"), body)
		w.WriteHeader(http.StatusAccepted)
		if strings.HasSuffix(r.URL.Path, "/batch") {
			io.WriteString(w, `{"ids":["1732600000000-0","1732600000000-1"]}`)
			return
		}
		io.WriteString(w, `{"id":"1732600000000-0"}`)
	}))
}

func ExampleHTTPPublisher() {
	gw := exampleGateway() // in production: the gateway's URL
	defer gw.Close()

	p, err := herald.NewHTTPPublisher(gw.URL, "api-key-from-the-environment", herald.HTTPConfig{})
	if err != nil {
		fmt.Println(err)
		return
	}
	id, err := p.Publish(context.Background(), "user:42", "greeting", map[string]string{"text": "hello"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("event id:", id)
	// Output:
	// gateway got POST /api/publish key=""
	// {"channel":"user:42","event":"greeting","data":{"text":"hello"}}
	// event id: 1732600000000-0
}

func ExamplePublishEffectComplete() {
	gw := exampleGateway()
	defer gw.Close()
	p, err := herald.NewHTTPPublisher(gw.URL, "api-key-from-the-environment", herald.HTTPConfig{})
	if err != nil {
		fmt.Println(err)
		return
	}

	ids, err := herald.PublishEffectComplete(context.Background(), p, herald.EffectComplete{
		UserID:       "42",
		UserEffectID: "0b7e4c1a-9f51-4b5e-8d8c-2f0f6b3f8a11",
		ResultURL:    "https://cdn.example/results/0b7e4c1a.png",
		Timestamp:    time.UnixMilli(1732600000000),
	}, herald.IdempotencyKey("job:1732599999000-0")) // the job's id: a retry cannot notify twice
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("event ids:", ids)
	// Output:
	// gateway got POST /api/publish/batch key="job:1732599999000-0"
	// {"items":[{"channel":"effect:0b7e4c1a-9f51-4b5e-8d8c-2f0f6b3f8a11","event":"effect.complete","data":{"userEffectId":"0b7e4c1a-9f51-4b5e-8d8c-2f0f6b3f8a11","resultUrl":"https://cdn.example/results/0b7e4c1a.png","timestamp":1732600000000,"userId":"42"}},{"channel":"user:42","event":"effect.complete","data":{"userEffectId":"0b7e4c1a-9f51-4b5e-8d8c-2f0f6b3f8a11","resultUrl":"https://cdn.example/results/0b7e4c1a.png","timestamp":1732600000000,"userId":"42"}}]}
	// event ids: [1732600000000-0 1732600000000-1]
}

// A RedisPublisher needs only the go-redis client of the Redis the gateways
// share. (This example is compiled but not run: it needs that Redis.)
func ExampleRedisPublisher() {
	opts, err := redis.ParseURL(os.Getenv("REDIS_URL"))
	if err != nil {
		fmt.Println(err)
		return
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	p := herald.NewRedisPublisher(rdb, herald.RedisConfig{}) // the gateway's defaults: 100 events, 10 minutes, no prefix

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	id, err := p.Publish(ctx, herald.UserChannel("42"), "greeting", json.RawMessage(`{"text":"hello"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("event id:", id)
}

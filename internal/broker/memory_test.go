package broker_test

import (
	"testing"

	"github.com/heraldgw/herald/internal/broker"
	"github.com/heraldgw/herald/internal/broker/brokertest"
)

func TestMemoryConformance(t *testing.T) {
	brokertest.Run(t, func(t *testing.T, h broker.Handler) broker.Broker {
		return broker.NewMemory(h, broker.MemoryConfig{})
	})
}

package hub

import "iter"

// fewConns is how many connections a connSet keeps in a slice before it
// switches to a map.
const fewConns = 8

// connSet is a set of connections: a slice while small (a user's few tabs,
// a personal channel), a map once large (a busy public channel). The
// common case costs a few words instead of a map per channel and per user,
// and removal stays cheap for the large one. Not safe for concurrent use:
// the shards' locks guard it.
type connSet struct {
	few  []*Conn
	many map[*Conn]struct{}
}

// add adds c, which must not be in the set.
func (s *connSet) add(c *Conn) {
	switch {
	case s.many != nil:
		s.many[c] = struct{}{}
	case len(s.few) < fewConns:
		s.few = append(s.few, c)
	default:
		s.many = make(map[*Conn]struct{}, 2*fewConns)
		for _, x := range s.few {
			s.many[x] = struct{}{}
		}
		s.few = nil
		s.many[c] = struct{}{}
	}
}

// remove removes c and reports whether it was in the set.
func (s *connSet) remove(c *Conn) bool {
	if s.many != nil {
		if _, ok := s.many[c]; !ok {
			return false
		}
		delete(s.many, c)
		return true
	}
	for i, x := range s.few {
		if x == c {
			last := len(s.few) - 1
			s.few[i], s.few[last] = s.few[last], nil
			s.few = s.few[:last]
			return true
		}
	}
	return false
}

func (s *connSet) len() int { return len(s.few) + len(s.many) }

// all yields every connection of the set; a nil set has none.
func (s *connSet) all() iter.Seq[*Conn] {
	return func(yield func(*Conn) bool) {
		if s == nil {
			return
		}
		for _, c := range s.few {
			if !yield(c) {
				return
			}
		}
		for c := range s.many {
			if !yield(c) {
				return
			}
		}
	}
}

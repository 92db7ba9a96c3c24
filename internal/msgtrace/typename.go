package msgtrace

import "reflect"

func typeName(v any) string {
	t := reflect.TypeOf(v)
	if t == nil {
		return ""
	}
	return t.String()
}

package app

import (
	"encoding/json"
	"fmt"

	"github.com/dataimage/dataimage/imagebuilder"
)

// specOnlyFields are the JSON fields of a DataImage spec (v1alpha1.DataImageSpec) around its
// inline definition: --definition-json takes a whole spec too, and ignores them.
var specOnlyFields = []string{"backupSource", "nodeName", "storageClassName", "volumeSize", "builder", "placement"}

// definitionJSON returns a definition given as JSON, for the definition's own parser (JSON is
// YAML), so that it is as strict as a definition file: unknown, repeated and wrongly-cased
// fields are errors, every problem is reported with its field. The fields of a DataImage spec
// that are not the definition's are dropped first.
func definitionJSON(data []byte) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, fmt.Errorf("%w: --definition-json: not a JSON object: %w", imagebuilder.ErrInvalidDefinition, err)
	}
	dropped := false
	for _, f := range specOnlyFields {
		if _, ok := obj[f]; ok {
			delete(obj, f)
			dropped = true
		}
	}
	if !dropped {
		return data, nil
	}
	data, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("dataimage-builder: --definition-json: %w", err)
	}
	return data, nil
}

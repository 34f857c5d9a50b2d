package v1alpha1

import "github.com/dataimage/dataimage/imagebuilder"

// DeepCopyInto copies the receiver into out. in must be non-nil.
//
// It is written by hand (the type says +kubebuilder:object:generate=false): controller-gen
// cannot generate it for the embedded imagebuilder.Definition, a type of another package
// without deep-copy methods.
// The embedded definition is copied by copyDefinition; the other fields as controller-gen would
// copy them. TestDeepCopySpec fails when a field is added to DataImageSpec or to
// imagebuilder.Definition that this function does not know.
func (in *DataImageSpec) DeepCopyInto(out *DataImageSpec) {
	*out = *in
	copyDefinition(&in.Definition, &out.Definition)
	if in.BackupSource != nil {
		out.BackupSource = in.BackupSource.DeepCopy()
	}
	if in.StorageClassName != nil {
		s := *in.StorageClassName
		out.StorageClassName = &s
	}
	if in.VolumeSize != nil {
		q := in.VolumeSize.DeepCopy()
		out.VolumeSize = &q
	}
	if in.Builder != nil {
		out.Builder = in.Builder.DeepCopy()
	}
}

// DeepCopy returns a deep copy of the receiver, or nil for nil.
func (in *DataImageSpec) DeepCopy() *DataImageSpec {
	if in == nil {
		return nil
	}
	out := new(DataImageSpec)
	in.DeepCopyInto(out)
	return out
}

// copyDefinition deep-copies an image definition: its only reference fields are the Backups and
// Tags slices (Backup holds strings only) and RecoveryTarget (strings and a *bool).
func copyDefinition(in, out *imagebuilder.Definition) {
	*out = *in
	if in.Backups != nil {
		out.Backups = make([]imagebuilder.Backup, len(in.Backups))
		copy(out.Backups, in.Backups)
	}
	if in.Tags != nil {
		out.Tags = make([]string, len(in.Tags))
		copy(out.Tags, in.Tags)
	}
	if in.RecoveryTarget != nil {
		t := *in.RecoveryTarget
		if t.Inclusive != nil {
			b := *t.Inclusive
			t.Inclusive = &b
		}
		out.RecoveryTarget = &t
	}
}

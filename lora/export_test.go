package lora

// SettingsCount is how many TrainConfig fields a resumed run compares.
func SettingsCount() int { return len(settings) }
